"""What any upload may be, and the error that says it is not: shared by the image intake (core.io.intake) and the
DICOM reader (core.io.dicom_input), so that both apply one set of limits and neither imports the other for them."""
from __future__ import annotations

MAX_BYTES = 50 * 2**20
MAX_PIXELS = 40_000_000   # one image, and all frames of a multi-frame DICOM together (120 MB of RGB at most)
MIN_SIDE = 32
DICOM_PREAMBLE = 128      # DICOM Part 10: 'DICM' follows a 128-byte preamble


class ImageRejected(ValueError):
    """An upload that cannot be analysed; str(exc) is a short message fit to show the user.

    `reason` is a stable machine-readable code: empty, too_many_bytes, not_image, unsupported_format, too_many_pixels,
    too_small, damaged, unsupported_mode, unreadable. `name` is the file name given by the caller (only for display).
    """

    def __init__(self, message: str, reason: str = "", name: str = ""):
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.name = name


def is_dicom(data: bytes) -> bool:
    """The Part 10 file signature: 'DICM' after the 128-byte preamble."""
    return data[DICOM_PREAMBLE:DICOM_PREAMBLE + 4] == b"DICM"
