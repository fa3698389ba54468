"""Input files as pages: PDF text layers, rendering, images, and the domain errors for bad files.
No OCR runs here (test_ocr_engines.py reads the pages)."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from service.ocr import samples
from service.ocr.errors import (ImageTooLarge, PdfEncrypted, PdfInvalid, TooManyPages,
                                UnsupportedDocument)
from service.ocr.pages import PageSettings, open_document, real_text

CONFIG = {"OCR_PDF_DPI": 150}


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_text_layer_is_used_exactly_without_ocr(tmp_path):
    second = ["Second page: the text layer is read as it is."] * 3
    path = write(tmp_path, "text.pdf", samples.text_pdf([list(samples.SAMPLE_LINES), second]))
    with open_document(path, CONFIG) as doc:
        assert (doc.kind, doc.page_count, doc.truncated) == ("pdf", 2, False)
        pages = list(doc.pages())
    assert [(p.number, p.count, p.source, p.image) for p in pages] == [(1, 2, "pdf-text", None), (2, 2, "pdf-text", None)]
    assert pages[0].text == "\n".join(samples.SAMPLE_LINES)
    assert pages[1].text == "\n".join(second)
    assert not pages[0].needs_ocr


def test_force_ocr_renders_even_with_a_text_layer(tmp_path):
    path = write(tmp_path, "text.pdf", samples.text_pdf([list(samples.SAMPLE_LINES)]))
    with open_document(path, CONFIG, force_ocr=True) as doc:
        (page,) = doc.pages()
    assert page.source == "pdf-render" and page.needs_ocr and page.text is None
    assert page.image.size == pytest.approx((595 * 150 / 72, 842 * 150 / 72), abs=1)  # A4 at 150 dpi
    assert page.image.mode == "RGB" and page.dpi == 150


def test_scanned_pdf_is_rendered_at_the_configured_dpi(tmp_path):
    img = samples.text_image()
    path = write(tmp_path, "scan.pdf", samples.image_pdf([img, img], dpi=150))
    with open_document(path, {"OCR_PDF_DPI": 300}) as doc:
        pages = list(doc.pages())
    assert [p.source for p in pages] == ["pdf-render", "pdf-render"]
    # the image was placed at 150 dpi, so at 300 dpi it renders twice its pixel size
    assert pages[0].image.size == pytest.approx((img.width * 2, img.height * 2), abs=2)


def test_a_poster_sized_page_is_rendered_within_the_pixel_limit(tmp_path):
    data = samples.text_pdf([["A huge page"]]).replace(b"/MediaBox [0 0 595 842]", b"/MediaBox [0 0 14400 14400]")
    path = write(tmp_path, "poster.pdf", data)
    with open_document(path, {"OCR_MAX_IMAGE_PIXELS": 4_000_000}, force_ocr=True) as doc:
        (page,) = doc.pages()
    assert page.image.width * page.image.height <= 4_000_000 and page.dpi < 150


def test_encrypted_pdf_is_refused_and_an_empty_password_is_tried(tmp_path):
    import pypdf
    source = pypdf.PdfReader(io.BytesIO(samples.text_pdf([list(samples.SAMPLE_LINES)])))
    for user_password, expect_ok in (("secret", False), ("", True)):
        writer = pypdf.PdfWriter(clone_from=source)
        writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-128")
        buf = io.BytesIO()
        writer.write(buf)
        path = write(tmp_path, f"enc-{expect_ok}.pdf", buf.getvalue())
        if expect_ok:
            with open_document(path, CONFIG) as doc:
                (page,) = doc.pages()
            assert page.text == "\n".join(samples.SAMPLE_LINES)
            with open_document(path, CONFIG, force_ocr=True) as doc:  # pdfium opens it too
                (page,) = doc.pages()
            assert page.image is not None
        else:
            with pytest.raises(PdfEncrypted) as exc:
                open_document(path, CONFIG)
            assert exc.value.code == "PDF_ENCRYPTED"


@pytest.mark.parametrize("data", [
    b"%PDF-1.4\nthis is not a pdf at all\n",
    b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
])
def test_malformed_pdf_is_refused(tmp_path, data):
    with pytest.raises(PdfInvalid) as exc:
        open_document(write(tmp_path, "bad.pdf", data), CONFIG)
    assert exc.value.code == "PDF_INVALID"


def test_page_cap_fails_or_truncates(tmp_path):
    path = write(tmp_path, "three.pdf", samples.text_pdf([list(samples.SAMPLE_LINES)] * 3))
    with pytest.raises(TooManyPages) as exc:
        open_document(path, {"OCR_MAX_PAGES": 2})
    assert exc.value.details == {"pages": 3, "max_pages": 2}
    with open_document(path, {"OCR_MAX_PAGES": 2}, truncate=True) as doc:
        assert doc.truncated and doc.page_count == 3
        assert [p.number for p in doc.pages()] == [1, 2]


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    with pytest.raises(ImageTooLarge) as exc:  # beyond Pillow's own limit
        open_document(write(tmp_path, "bomb.png", samples.png_bomb()), CONFIG)
    assert exc.value.code == "IMAGE_TOO_LARGE"
    # beyond the configured limit but within Pillow's: still refused, with the numbers
    with pytest.raises(ImageTooLarge) as exc:
        open_document(write(tmp_path, "big.png", samples.png_bomb(5000, 5000)), {"OCR_MAX_IMAGE_PIXELS": 20_000_000})
    assert exc.value.details["width"] == 5000 and exc.value.details["max_pixels"] == 20_000_000


def test_multi_frame_tiff_is_one_page_per_frame(tmp_path):
    frames = [samples.text_image([f"Page number {i}"]) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:], dpi=(200, 200))
    with open_document(write(tmp_path, "pages.tif", buf.getvalue()), CONFIG) as doc:
        pages = list(doc.pages())
    assert [(p.number, p.count, p.source) for p in pages] == [(1, 3, "image"), (2, 3, "image"), (3, 3, "image")]
    assert all(p.image.size == frames[0].size for p in pages)
    assert pages[2].image.tobytes() == frames[2].tobytes() and pages[0].dpi == 200


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (200, 100), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    with open_document(write(tmp_path, "photo.jpg", buf.getvalue()), CONFIG) as doc:
        (page,) = doc.pages()
    assert page.image.size == (100, 200)


def test_transparent_png_and_unsupported_files(tmp_path):
    img = Image.new("RGBA", (50, 20), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    with open_document(write(tmp_path, "t.png", buf.getvalue()), CONFIG) as doc:
        (page,) = doc.pages()
    assert page.image.mode == "RGBA"  # converted to white paper by the engines (engines._rgb)
    for name, data in (("notes.txt", b"just text\n"), ("eps.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n")):
        with pytest.raises(UnsupportedDocument) as exc:
            open_document(write(tmp_path, name, data), CONFIG)
        assert exc.value.code == "UNSUPPORTED_FILE_TYPE"


def test_what_counts_as_a_real_text_layer():
    settings = PageSettings()
    assert real_text("The quick brown fox jumps over the lazy dog.", settings)
    assert not real_text("  12  \n", settings)                       # a page number on a scan
    assert not real_text("\x01\x02\x03\x04" * 20 + "abc", settings)   # unmapped glyphs
    assert not real_text("\ue000\ue001" * 30 + "words here and more", settings)
