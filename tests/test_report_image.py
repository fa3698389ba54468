"""Image analysis: EXIF with GPS kept private, OCR fields, decompression bombs, broken files."""
from __future__ import annotations

import struct
import time
import zlib

import pytest
from PIL import ExifTags, Image

from service.engine.kind import JobFailed
from service.reports import analyze
from service.reports.schema import validate

GPS = {
    ExifTags.GPS.GPSLatitudeRef: "S", ExifTags.GPS.GPSLatitude: (33.0, 51.0, 54.0),
    ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: (151.0, 12.0, 36.0),
}


def photo(path, fmt: str, gps: bool = True):
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "TestCam"
    exif[ExifTags.Base.Model] = "X1"
    exif[ExifTags.Base.Artist] = "Ana"
    exif[ExifTags.Base.DateTime] = "2025:03:14 10:20:30"
    if gps:
        exif[ExifTags.IFD.GPSInfo] = GPS
    Image.new("RGB", (64, 32), "white").save(path, fmt, exif=exif, dpi=(300, 300))
    return path


def _walk(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


@pytest.mark.parametrize("fmt, kind", [("JPEG", "jpeg"), ("PNG", "png")])
def test_exif_and_gps_is_private_by_default(tmp_path, fmt, kind):
    result = analyze(photo(tmp_path / "p.img", fmt), {})
    validate(result)
    image = result["image"]
    assert result["source"]["type"] == kind
    assert (image["format"], image["width"], image["height"], image["mode"]) == (fmt, 64, 32, "RGB")
    assert image["dpi"] == [300.0, 300.0] if fmt == "JPEG" else image["dpi"][0] == pytest.approx(300, abs=0.1)
    assert image["exif"] == {"Make": "TestCam", "Model": "X1", "Artist": "Ana", "DateTime": "2025:03:14 10:20:30"}
    assert image["has_gps"] is True and image["has_exif"] is True
    assert "private" not in result
    # Nowhere in the result: no GPS key, no coordinate.
    flat = list(_walk(result))
    assert not any(isinstance(v, str) and v.startswith("GPS") for v in flat)
    assert 33.865 not in flat and -33.865 not in flat and 51.0 not in flat
    assert result["summary"]["author"] == "Ana" and result["summary"]["created"] == "2025-03-14T10:20:30"
    assert [w["code"] for w in result["warnings"]] == ["NO_OCR"]
    assert result["text"]["source"] == "none"


def test_gps_on_request(tmp_path):
    result = analyze(photo(tmp_path / "p.jpg", "JPEG"), {}, include_gps=True)
    validate(result)
    gps = result["private"]["gps"]
    assert (gps["latitude"], gps["longitude"]) == (-33.865, 151.21)
    assert gps["raw"]["GPSLatitudeRef"] == "S"


def test_no_gps(tmp_path):
    result = analyze(photo(tmp_path / "p.jpg", "JPEG", gps=False), {}, include_gps=True)
    assert result["image"]["has_gps"] is False and "private" not in result


def test_ocr_text_and_fields(tmp_path):
    seen = []

    text = "Invoice # A-77\nTotal: \u20ac12,50\nCall 555-123-4567"

    def ocr(image):
        seen.append((image.mode, image.size))
        return text

    result = analyze(photo(tmp_path / "p.png", "PNG"), {}, ocr=ocr)
    validate(result)
    assert seen == [("RGB", (64, 32))]
    assert result["text"] == {"content": text, "length": len(text), "truncated": False, "source": "ocr"}
    assert [(f["type"], f["value"], f["position"]["line"]) for f in result["fields"]] == [
        ("reference", "A-77", 1), ("pair", "\u20ac12,50", 2), ("money", "12.50 EUR", 2), ("phone", "5551234567", 3)]
    assert result["warnings"] == []


@pytest.mark.parametrize("fmt, kind", [("TIFF", "tiff"), ("WEBP", "webp"), ("BMP", "bmp")])
def test_other_formats(tmp_path, fmt, kind):
    path = tmp_path / "x"
    Image.new("L", (10, 20)).save(path, fmt)
    result = analyze(path, {})
    validate(result)
    assert result["source"]["type"] == kind
    assert (result["image"]["width"], result["image"]["height"]) == (10, 20)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path, width: int, height: int):
    """A few hundred bytes that declare width*height grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height", [(30000, 30000), (8000, 8000)])
def test_decompression_bomb(tmp_path, width, height):
    # 30000² trips Pillow's own guard at open; 8000² is under Pillow's but over ours.
    path = bomb_png(tmp_path / "bomb.png", width, height)
    assert path.stat().st_size < 1024
    started = time.monotonic()
    with pytest.raises(JobFailed) as caught:
        analyze(path, {})
    assert time.monotonic() - started < 1.0
    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert Image.MAX_IMAGE_PIXELS == 89478485  # the process-wide setting is left alone


def test_pixel_limit_comes_from_config(tmp_path):
    path = tmp_path / "p.png"
    Image.new("L", (100, 100)).save(path)
    with pytest.raises(JobFailed) as caught:
        analyze(path, {"REPORT_IMAGE_MAX_PIXELS": 9999})
    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert caught.value.details["pixels"] == 10000


def test_malformed_images(tmp_path):
    garbage = tmp_path / "g.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)
    truncated = tmp_path / "t.jpg"
    Image.effect_noise((200, 200), 50).save(tmp_path / "noise.jpg", "JPEG")
    noise = (tmp_path / "noise.jpg").read_bytes()
    truncated.write_bytes(noise[: len(noise) // 2])  # a valid header, half the scan data
    for path in (garbage, truncated):
        with pytest.raises(JobFailed) as caught:
            analyze(path, {})
        assert caught.value.code == "IMAGE_INVALID", path
