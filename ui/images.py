"""Image encoding for display and download (all in memory: nothing uploaded is written to disk) and the overlay
colours the pages share."""
from __future__ import annotations

import base64
import hashlib

import numpy as np

MASK_COLOUR = (0, 230, 118)  # green contour/fill: visible on pink/brown skin, not a class colour
CAM_OPACITY = 0.45


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 image (HxW or HxWx3 RGB) as PNG in memory."""
    import cv2

    arr = np.ascontiguousarray(array)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def thumbnail_data_uri(rgb: np.ndarray, max_side: int = 96) -> str:
    """A small PNG of `rgb` as a data: URI (for image columns of st.dataframe)."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def digest(data: bytes) -> str:
    """Short content hash of an upload (the key of its cached analysis)."""
    return hashlib.sha1(data).hexdigest()


def mask_overlay(rgb: np.ndarray, mask: np.ndarray, opacity: float = 0.3) -> np.ndarray:
    """The lesion mask as contour + translucent fill over the image."""
    from core.analysis.cam import overlay_mask

    return overlay_mask(rgb, mask, color=MASK_COLOUR, alpha=opacity, contour=True)


def cam_overlay(rgb: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The CAM as a heat map over the image; with `mask` (same size as the image), only inside the lesion mask."""
    from core.analysis.cam import overlay_heatmap

    heat = overlay_heatmap(rgb, cam, alpha=CAM_OPACITY)
    return heat if mask is None else np.where(mask[:, :, None] > 0, heat, rgb)
