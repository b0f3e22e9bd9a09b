"""The one image-intake path: untrusted bytes in, an HxWx3 uint8 RGB array (or ImageRejected) out.

Used by the dashboard upload, the batch page and the predict CLI. Rules:

- The format is detected from the content (Pillow, restricted to the allowed plugins), never from the file name.
  Allowed: JPEG (incl. MPO, the multi-picture JPEG many cameras write), PNG (incl. APNG), BMP, TIFF, WebP, GIF.
- Limits are checked cheapest first: byte size, then the pixel count and minimum side from the header (before any
  pixel data is decoded, so a decompression bomb costs microseconds), then the full decode.
- Multi-frame files (animated GIF/WebP/APNG, multi-page TIFF, MPO) use the first frame.
- EXIF orientation is applied (a phone photo taken in portrait comes out in portrait); a malformed EXIF block is
  ignored rather than rejecting an otherwise good image.
- Colour modes: alpha (RGBA, LA, PA, P with transparency) is composited on white, so transparent areas become
  white rather than whatever colour happens to be stored under them. CMYK / YCbCr use Pillow's conversion,
  LAB goes through LittleCMS. 16-bit data (I;16*, 48-bit) is scaled by 1/257 (65535 -> 255). 32-bit integer ("I")
  data that fits in 0..255 is used as is, in 0..65535 is scaled by 1/257, otherwise min-max normalised. Float
  ("F") data in [0, 1] is scaled by 255, otherwise min-max normalised. Embedded ICC profiles are not applied
  (the training images were read the same way).
- Truncated or damaged files raise ImageRejected (ImageFile.LOAD_TRUNCATED_IMAGES is never set); PNG chunk CRCs are
  verified. Every exception raised while parsing or decoding becomes ImageRejected, and no warning escapes.
- Nothing is written to disk, and nothing about an upload is logged: Pillow's DEBUG logging prints EXIF / TIFF
  tag values (an ImageDescription or Artist tag can hold a patient's name) and PNG chunk details, so the "PIL"
  logger is capped at INFO when this module is imported, whatever the root logger's level.

DICOM files (the 'DICM' signature at offset 128) go to core.io.dicom_input, which applies the same limits and returns
the first frame to load_image; load_frames gives every frame of a file and the patient context of its tags.

Pillow's global Image.MAX_IMAGE_PIXELS is left alone (other code shares it); its DecompressionBombWarning/Error are
caught here, and our own, lower max_pixels check runs first on the header size.
"""
from __future__ import annotations

import io
import logging
import os
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps
# Register exactly the plugins we use (Image.open(formats=...) would otherwise import every plugin on first use).
from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, MpoImagePlugin,  # noqa: F401
                 PngImagePlugin, TiffImagePlugin, WebPImagePlugin)

from core.io.image_limits import MAX_BYTES, MAX_PIXELS, MIN_SIDE, ImageRejected, is_dicom

# Privacy: Pillow's DEBUG records carry upload metadata (EXIF strings); no log configuration may copy them out.
_PIL_LOGGER = logging.getLogger("PIL")
if _PIL_LOGGER.level < logging.INFO:  # NOTSET (inherit root) or DEBUG
    _PIL_LOGGER.setLevel(logging.INFO)

# Pillow plugin ids we let parse untrusted bytes; everything else is never tried. The JPEG plugin hands back an
# MPO image (format "MPO") for multi-picture JPEGs, so that format is accepted from it.
OPEN_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
ALLOWED_FORMATS = OPEN_FORMATS + ("MPO",)
SUPPORTED_TEXT = "JPEG, PNG, BMP, TIFF, WebP or GIF"
#: File-name extensions of those formats, for file pickers (load_image itself detects the format from the content).
FILE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp", "gif", "dcm")
# Progressive JPEGs with thousands of scans are a known CPU-exhaustion trick; real files have ~10.
MAX_JPEG_SCANS = 1000


def _sniff_allowed(head: bytes) -> str | None:
    """Name of an allowed format whose signature starts `head` (used to tell 'damaged' from 'not an image')."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head.startswith(b"BM") and len(head) >= 26 and head[6:10] == b"\x00\x00\x00\x00":
        return "BMP"  # reserved fields are zero in every real BMP
    return None


def _sniff_unsupported(data: bytes) -> str | None:
    """Name of a recognisable but unsupported format, for a clearer message."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        return None
    if head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f\xff\x51"):
        return "JPEG 2000"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"8BPS"):
        return "PSD"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ICO"
    if head.startswith(b"\xff\x0a") or head[4:12] == b"JXL \r\n\x87\n":
        return "JPEG XL"
    if is_dicom(data):
        return "DICOM"
    if b"<svg" in data[:2048].lower():
        return "SVG"
    return None


def _human_bytes(size: int) -> str:
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g}"


def _to_uint8_gray(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth / float array to uint8 (rules in the module docstring)."""
    if mode == "F" or array.dtype.kind == "f":
        data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(data.min()), float(data.max())
        if lo >= 0.0 and hi <= 1.0:
            scaled = data * 255.0
        elif hi > lo:
            scaled = (data - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(data)
    else:
        data = array.astype(np.int64)
        lo, hi = int(data.min()), int(data.max())
        if mode.startswith("I;16") or array.dtype.itemsize == 2:
            scaled = data / 257.0
        elif lo >= 0 and hi <= 255:
            scaled = data.astype(np.float64)
        elif lo >= 0 and hi <= 65535:
            scaled = data / 257.0
        elif hi > lo:
            scaled = (data - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros(data.shape, np.float64)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(img: Image.Image, name: str) -> np.ndarray:
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("1", "L", "P", "RGB") and img.has_transparency_data):
        rgb = _composite_on_white(img)
    elif mode == "RGB":
        rgb = img
    elif mode.startswith("I;16") or mode in ("I", "F"):
        gray = _to_uint8_gray(np.asarray(img), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    elif mode in ("1", "L", "P", "CMYK", "YCbCr", "HSV"):
        rgb = img.convert("RGB")
    elif mode == "LAB":
        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        rgb = ImageCms.applyTransform(img, transform)
    else:
        array = np.asarray(img)
        if array.dtype == np.uint16 and array.ndim == 3 and array.shape[2] in (3, 4):
            return np.clip(np.rint(array[:, :, :3] / 257.0), 0, 255).astype(np.uint8)
        raise ImageRejected(f"Unsupported colour mode: {mode}", "unsupported_mode", name)
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageRejected(f"Unsupported colour mode: {mode}", "unsupported_mode", name)
    return array


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if hasattr(data, "getvalue"):  # io.BytesIO, streamlit UploadedFile
        return bytes(data.getvalue())
    raise TypeError(f"load_image expects bytes, got {type(data).__name__}")


def load_image(data: bytes, name: str = "", *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               min_side: int = MIN_SIDE) -> np.ndarray:
    """Decode untrusted image bytes to an HxWx3 uint8 RGB array, or raise ImageRejected with a short message.

    `name` is only used to label the exception (the format is detected from the content).
    """
    data = _as_bytes(data)
    if len(data) == 0:
        raise ImageRejected("Empty file", "empty", name)
    if len(data) > max_bytes:
        raise ImageRejected(f"File is larger than {_human_bytes(max_bytes)}", "too_many_bytes", name)

    if is_dicom(data):  # DICOM Part 10: core.io.dicom_input (first frame; its own checks and messages)
        from core.io.dicom_input import read_dicom
        return read_dicom(data, name, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side).frames[0]
    with warnings.catch_warnings():
        # Pillow warns about bombs, odd EXIF, palette transparency...; none of that may reach the caller.
        warnings.simplefilter("ignore")
        try:
            return _decode(data, name, max_pixels, min_side)
        except ImageRejected:
            raise
        except Image.DecompressionBombError:
            # Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS) caps a max_pixels set above it.
            limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
            raise ImageRejected(f"Image is larger than {_megapixels(limit)} megapixels",
                                "too_many_pixels", name) from None
        except Exception as exc:  # noqa: BLE001 - anything from a decoder means the file cannot be used
            raise ImageRejected("The image file is damaged or truncated", "damaged", name) from exc


def load_frames(data: bytes, name: str = ""):
    """Every image a file holds, with the patient context of its tags: a DICOM's frames and tag context
    (core.io.dicom_input.read_dicom), any other file's one image (load_image) and an empty context. Returns
    (frames, core.data.patient_context.PatientContext); raises ImageRejected as load_image does."""
    data = _as_bytes(data)
    if is_dicom(data):
        from core.io.dicom_input import read_dicom
        image = read_dicom(data, name)
        return image.frames, image.context
    from core.data.patient_context import PatientContext
    return [load_image(data, name)], PatientContext()


def _decode(data: bytes, name: str, max_pixels: int, min_side: int) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
    except Image.UnidentifiedImageError:
        known = _sniff_allowed(data[:64])
        if known:
            raise ImageRejected("The image file is damaged or truncated", "damaged", name) from None
        other = _sniff_unsupported(data)
        if other:
            raise ImageRejected(f"Unsupported image format: {other} (use {SUPPORTED_TEXT})",
                                "unsupported_format", name) from None
        raise ImageRejected(f"This file is not an image (supported: {SUPPORTED_TEXT})", "not_image", name) from None

    with img:
        if img.format not in ALLOWED_FORMATS:
            raise ImageRejected(f"Unsupported image format: {img.format} (use {SUPPORTED_TEXT})",
                                "unsupported_format", name)
        # Header-only checks: nothing has been decoded yet.
        width, height = img.size
        if width * height > max_pixels:
            raise ImageRejected(f"Image is larger than {_megapixels(max_pixels)} megapixels", "too_many_pixels", name)
        if min(width, height) < min_side:
            raise ImageRejected(f"Image is too small (minimum {min_side} px per side)", "too_small", name)
        if img.format in ("JPEG", "MPO") and data.count(b"\xff\xda") > MAX_JPEG_SCANS:
            raise ImageRejected("The image file is damaged or truncated", "damaged", name)
        if img.format == "PNG":
            _verify_png(data)

        img.load()  # first frame; raises on truncated / corrupt data
        if img.size != (width, height):
            raise ImageRejected("The image file is damaged or truncated", "damaged", name)
        try:
            oriented = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 - a malformed EXIF block must not sink a good image
            oriented = img
        if oriented is None:
            oriented = img
        array = _to_rgb(oriented, name)

    array = np.ascontiguousarray(array, dtype=np.uint8)
    if not array.flags.writeable:  # np.asarray(PIL image) is read-only; hand the caller an array it owns
        array = array.copy()
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < min_side:
        raise ImageRejected("The image file is damaged or truncated", "damaged", name)
    return array


def _verify_png(data: bytes) -> None:
    """Check every PNG chunk CRC (Pillow's decoder skips the IDAT ones)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as probe:
        probe.verify()


def load_image_file(path: str | os.PathLike, *, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                    min_side: int = MIN_SIDE) -> np.ndarray:
    """Read a file (at most max_bytes + 1 bytes) and decode it with load_image."""
    name = os.path.basename(os.fspath(path))
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise ImageRejected("File not found", "unreadable", name) from None
    except OSError as exc:
        raise ImageRejected(f"Cannot read the file ({exc.strerror or type(exc).__name__})", "unreadable", name) from None
    return load_image(data, name, max_bytes=max_bytes, max_pixels=max_pixels, min_side=min_side)


def load_visit(data: bytes, name: str = ""):
    """An image of one visit of a lesion with what its DICOM tags say about it: a core.io.dicom_input.DicomImage
    (first frame used; .taken, .mm_per_pixel, .lesion, .context, .notes) for a DICOM file, a DicomImage-shaped record
    with empty tags for any other image. Raises ImageRejected as load_image does."""
    from core.io.dicom_input import DicomImage, read_dicom
    from core.data.patient_context import PatientContext

    data = _as_bytes(data)
    if data[128:132] == b"DICM":
        return read_dicom(data, name)
    return DicomImage([load_image(data, name)], PatientContext())
