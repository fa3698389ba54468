"""The OCR layer's domain errors. Each carries a stable code; a job kind turns the ones raised
while running into ``JobFailed(exc.code, exc.message, exc.details)``.

They subclass ``ValidationError`` where the input or the request is at fault (a missing
engine or language is the request asking for something this host does not have), so that
``validate`` on the request thread can raise them as they are and the API answers 400.
"""
from __future__ import annotations

from service.errors import IlgunError, ValidationError


class OcrEngineUnavailable(ValidationError):
    code = "OCR_ENGINE_UNAVAILABLE"
    message = "That OCR engine is not installed on this server."


class OcrLanguageUnavailable(ValidationError):
    code = "OCR_LANGUAGE_UNAVAILABLE"
    message = "That OCR language is not installed on this server."


class ImageTooLarge(ValidationError):
    code = "IMAGE_TOO_LARGE"
    message = "The image has more pixels than allowed."


class ImageInvalid(ValidationError):
    code = "IMAGE_INVALID"
    message = "The file is not an image this server can read."


class PdfEncrypted(ValidationError):
    code = "PDF_ENCRYPTED"
    message = "The PDF is encrypted with a password."


class PdfInvalid(ValidationError):
    code = "PDF_INVALID"
    message = "The file is not a readable PDF."


class TooManyPages(ValidationError):
    code = "TOO_MANY_PAGES"
    message = "The document has more pages than allowed."


class UnsupportedDocument(ValidationError):
    # the same code as service.errors.UnsupportedFileType (uploads), so clients see one code
    code = "UNSUPPORTED_FILE_TYPE"
    message = "Only images (PNG, JPEG, TIFF, WebP, BMP, GIF) and PDF files can be read."


class OcrFailed(IlgunError):
    """The engine itself failed on a page (a crashed predictor, tesseract exiting non-zero).
    Not the user's fault; a kind may treat it as transient once."""
    code = "OCR_FAILED"
    message = "The OCR engine failed."


class EngineBusy(IlgunError):
    """Waiting for the engine took longer than the caller's timeout."""
    code = "OCR_ENGINE_BUSY"
    message = "The OCR engine stayed busy for too long."


class EngineWaitCancelled(Exception):
    """The caller's ``cancelled()`` turned true while it waited for an engine. Not an
    IlgunError: the kind should answer with ``ctx.check_cancelled()``, which carries the reason."""
