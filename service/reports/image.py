"""Images with Pillow: format, size, mode, DPI, frames, EXIF, and OCR text with key fields.

Decompression bombs: ``Image.open`` only reads the header, so the declared size is checked
against REPORT_IMAGE_MAX_PIXELS before any pixel is decoded. ``Image.MAX_IMAGE_PIXELS`` is left
alone (it is process-wide, and other jobs share the process); if Pillow's own guard fires first
(``DecompressionBombError``, at twice its limit) that is IMAGE_TOO_LARGE too. Its warning, for
sizes between its limit and twice it, is not silenced here (``warnings.catch_warnings`` is not
thread-safe): our check refuses those sizes anyway under the default limit.

Location privacy: EXIF GPS is never part of ``image.exif``. ``image.has_gps`` says whether the
file carries a location; the coordinates go to ``private.gps`` only when the caller asks
(``include_gps``), so a result that is shared cannot leak where a photo was taken. The GPS IFD
pointer tag, MakerNote (opaque vendor data) and XMP (which may repeat the location) are not
echoed either.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from PIL import ExifTags, Image, UnidentifiedImageError

from service.reports import errors
from service.reports.fields import detect
from service.reports.settings import ReportSettings

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "webp": "WEBP", "bmp": "BMP"}
# Pointers to other IFDs and opaque blobs: meaningless or unsafe to show.
_HIDDEN_TAGS = {int(ExifTags.IFD.Exif), int(ExifTags.IFD.GPSInfo), int(ExifTags.IFD.Interop),
                int(ExifTags.IFD.MakerNote), 0x02BC, 0x83BB, 0x8773, 0x927C}  # XMP, IPTC, ICC, MakerNote
_VALUE_TEXT_MAX = 200
_VALUE_ITEMS_MAX = 16
_OCR_MODES = ("1", "L", "RGB", "RGBA")


def _plain(value: Any, depth: int = 0) -> Any:
    """An EXIF value as JSON: rationals as floats, short ASCII bytes as text, long bytes as a size."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value, 6) if value == value and abs(value) != float("inf") else None
    if hasattr(value, "numerator") and hasattr(value, "denominator"):  # IFDRational, Fraction
        try:
            return round(float(value), 6) if value.denominator else None
        except (ZeroDivisionError, ValueError, OverflowError):
            return None
    if isinstance(value, bytes):
        for prefix in (b"ASCII\x00\x00\x00", b"UNICODE\x00", b"\x00" * 8):  # UserComment's charset
            if value.startswith(prefix):
                value = value[len(prefix):]
                break
        stripped = value.rstrip(b"\x00")
        if len(stripped) <= _VALUE_TEXT_MAX and all(32 <= b < 127 for b in stripped):
            return stripped.decode("ascii")
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return value.replace("\x00", "").strip()[:_VALUE_TEXT_MAX]
    if isinstance(value, (tuple, list)) and depth < 2:
        return [_plain(item, depth + 1) for item in value[:_VALUE_ITEMS_MAX]]
    return str(value)[:_VALUE_TEXT_MAX]


def _tag_name(tag: int, names: dict) -> str:
    return names.get(tag) or f"Tag0x{tag:04X}"


def _exif(image: Image.Image, settings: ReportSettings) -> tuple[dict, dict, bool]:
    """(public tags, GPS tags, has_gps). A broken EXIF block is reported as no EXIF."""
    try:
        exif = image.getexif()
        tags = {tag: value for tag, value in exif.items() if tag not in _HIDDEN_TAGS}
        tags.update({tag: value for tag, value in exif.get_ifd(ExifTags.IFD.Exif).items()
                     if tag not in _HIDDEN_TAGS})
        gps = dict(exif.get_ifd(ExifTags.IFD.GPSInfo))
        has_gps = bool(gps) or int(ExifTags.IFD.GPSInfo) in exif
    except Exception:  # Pillow raises many things for corrupt EXIF; pixels may still be fine
        return {}, {}, False
    public = {}
    for tag in sorted(tags)[: settings.image_max_exif_tags]:
        public[_tag_name(tag, ExifTags.TAGS)] = _plain(tags[tag])
    return public, {_tag_name(tag, ExifTags.GPSTAGS): _plain(value) for tag, value in gps.items()}, has_gps


def _degrees(value: Any, ref: Any) -> float | None:
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "replace")
    return round(-degrees if str(ref).strip().upper() in ("S", "W") else degrees, 7)


def gps_summary(raw: dict) -> dict:
    latitude = _degrees(raw.get("GPSLatitude"), raw.get("GPSLatitudeRef"))
    longitude = _degrees(raw.get("GPSLongitude"), raw.get("GPSLongitudeRef"))
    altitude = raw.get("GPSAltitude")
    return {"latitude": latitude, "longitude": longitude,
            "altitude": altitude if isinstance(altitude, (int, float)) else None, "raw": raw}


def _exif_date(value: Any) -> str | None:
    """EXIF's "2025:03:14 10:20:30" as ISO 8601, or None."""
    try:
        return dt.datetime.strptime(str(value).strip()[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def _dpi(info: dict) -> list[float] | None:
    dpi = info.get("dpi")
    try:
        return [round(float(v), 2) for v in dpi][:2] if dpi else None
    except (TypeError, ValueError):
        return None


def _too_large(width: int, height: int, settings: ReportSettings) -> errors.JobFailed:
    return errors.failed(errors.IMAGE_TOO_LARGE, "The image has too many pixels.", width=width, height=height,
                         pixels=width * height, max_pixels=settings.image_max_pixels)


def analyze_image(path, kind: str, settings: ReportSettings, progress, check_cancelled, ocr=None,
                  include_gps: bool = False) -> dict:
    expected = _PIL_FORMATS[kind]
    try:
        # formats=: only the decoder the bytes were sniffed as, so Pillow cannot be steered to
        # another (and less exercised) plugin.
        image = Image.open(path, formats=[expected])
    except Image.DecompressionBombError as exc:
        raise errors.failed(errors.IMAGE_TOO_LARGE, "The image has too many pixels.",
                            reason=errors.describe(exc), max_pixels=settings.image_max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError) as exc:
        raise errors.failed(errors.IMAGE_INVALID, "The image cannot be read.", reason=errors.describe(exc)) from None
    with image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise errors.failed(errors.IMAGE_INVALID, "The image has no pixels.", width=width, height=height)
        if width * height > settings.image_max_pixels:
            raise _too_large(width, height, settings)
        try:
            frames = int(getattr(image, "n_frames", 1) or 1)
            image.seek(0)
            image.load()  # proves the pixels decode; malformed and truncated files fail here
        except Image.DecompressionBombError:
            raise _too_large(width, height, settings) from None
        except Exception as exc:
            raise errors.failed(errors.IMAGE_INVALID, "The image's pixels cannot be decoded.",
                                reason=errors.describe(exc)) from None
        check_cancelled()
        progress(30.0, "image decoded")
        exif, gps_raw, has_gps = _exif(image, settings)
        info = {
            "format": image.format,
            "width": width,
            "height": height,
            "mode": image.mode,
            "dpi": _dpi(image.info),
            "frames": frames,
            "animated": bool(getattr(image, "is_animated", False)),
            "has_icc_profile": bool(image.info.get("icc_profile")),
            "has_exif": bool(exif) or has_gps,
            "has_gps": has_gps,
            "exif": exif,
        }
        text = ""
        if ocr is not None:
            check_cancelled()
            progress(40.0, "OCR")
            picture = image if image.mode in _OCR_MODES else image.convert("RGB")
            text = (ocr(picture) or "").replace("\x00", "")
    warnings = []
    if ocr is None:
        warnings.append({"code": "NO_OCR", "message": "No OCR engine was given; the image's text was not read."})
    if frames > 1:
        warnings.append({"code": "FIRST_FRAME_ONLY", "message": f"The image has {frames} frames; only the first was read."})
    kept = text[: settings.max_text_chars]
    out = {
        "image": info,
        "metadata": {"title": exif.get("ImageDescription") or None, "author": exif.get("Artist") or None,
                     "subject": None, "creator": exif.get("Software") or None, "producer": None,
                     "created": _exif_date(exif.get("DateTimeOriginal") or exif.get("DateTime")),
                     "modified": _exif_date(exif.get("DateTime"))},
        "fields": detect(kept, limit=settings.max_fields),
        "text": {"content": kept, "length": len(text), "truncated": len(text) > len(kept),
                 "source": "ocr" if text.strip() else "none"},
        "warnings": warnings,
        "truncated": len(text) > len(kept),
        "ocr": {"available": ocr is not None},
    }
    if include_gps and has_gps:
        out["private"] = {"gps": gps_summary(gps_raw)}
    return out
