"""Generated sample pages with known text, for tests, benchmarks and a self-check.

Nothing here is fetched or shipped: text is drawn with DejaVu Sans (Debian's fonts-dejavu-core,
present wherever Pillow's tests run) or written into a minimal hand-made PDF with the standard
Helvetica font, so the truth is exactly known.
"""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

SAMPLE_LINES = (
    "The quick brown fox jumps over the lazy dog.",
    "Invoice 2024-117 was paid on 3 March for 1,250.00 EUR.",
    "Please send the signed contract back before Friday.",
    "Our office is open from 9 am to 5 pm, Monday to Friday.",
    "Reference number: QX-4471, account 0038 2219 5510.",
)

# A longer, varied text for full pages (sentences from plain office prose).
PAGE_TEXT = (
    "Minutes of the planning meeting held on Tuesday afternoon. The committee reviewed the budget "
    "for the coming quarter and agreed to move two projects forward. Maria presented the results "
    "of the customer survey: most answers were positive, but delivery times were criticised. "
    "The warehouse will extend its opening hours from next month. Peter asked whether the new "
    "software licences had been ordered; they arrive on the 14th. The meeting closed at 4.30 pm "
    "and the next one is planned for the first Monday of the month. Action items were assigned "
    "to each team lead, with a short written update expected one week before the next meeting."
)


def font(size: int = 28) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(FONT, size)


def text_image(lines=SAMPLE_LINES, size: int = 28, margin: int = 40, spacing: float = 1.9) -> Image.Image:
    """Black lines on a white RGB image: 28 px is 10-11 pt type scanned at 200 dpi."""
    f = font(size)
    width = max(int(f.getlength(line)) for line in lines) + 2 * margin
    step = int(size * spacing)
    img = Image.new("RGB", (width, 2 * margin + step * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((margin, margin + i * step), line, font=f, fill="black")
    return img


def wrap(text: str, f: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if f.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def a4_page(dpi: int = 150, point_size: float = 11, text: str = PAGE_TEXT, paragraphs: int = 6,
            seed: int = 0) -> tuple[Image.Image, list[str]]:
    """An A4 page at ``dpi`` filled with wrapped ``point_size`` text; (image, its lines).
    ``seed`` rotates the words so pages differ."""
    width, height = round(8.27 * dpi), round(11.69 * dpi)
    size = round(point_size * dpi / 72)
    f = font(size)
    margin = round(0.8 * dpi)
    words = text.split()
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    y, lines = margin, []
    for p in range(paragraphs):
        shift = (seed * 7 + p * 13) % len(words)
        para = " ".join(words[shift:] + words[:shift])
        for line in wrap(para, f, width - 2 * margin):
            if y + size > height - margin:
                return img, lines
            draw.text((margin, y), line, font=f, fill="black")
            lines.append(line)
            y += round(size * 1.45)
        y += size
    return img, lines


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def text_pdf(pages: list[list[str]], point_size: int = 12) -> bytes:
    """A minimal PDF whose pages carry ``pages`` lines as real text (Helvetica, WinAnsi), by
    hand: a PDF library would be a dependency for tests alone."""
    objects: list[bytes] = []
    n = len(pages)
    font_id, pages_id = 3 + 2 * n, 2
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    for i, lines in enumerate(pages):
        ops = [f"BT /F1 {point_size} Tf {point_size * 1.5:.1f} TL 72 770 Td"]
        for line in lines:
            ops.append(f"({_pdf_escape(line)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent {pages_id} 0 R /MediaBox [0 0 595 842] "
                       f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {4 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def image_pdf(images: list[Image.Image], dpi: int = 150) -> bytes:
    """A 'scanned' PDF: each image a page, no text layer (Pillow's PDF writer)."""
    out = io.BytesIO()
    first, rest = images[0].convert("RGB"), [im.convert("RGB") for im in images[1:]]
    first.save(out, "PDF", resolution=dpi, save_all=True, append_images=rest)
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width``×``height`` pixels with almost no data: what a
    decompression bomb looks like to a reader that checks the header first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
