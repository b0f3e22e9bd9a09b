"""Images that are not dermoscopy, for testing the not-dermoscopy check (calibration.evaluate's OOD figures,
calibration.fit_dermoscopy_check): real photographs available offline and synthetic images no dermatoscope produces.
"""
from __future__ import annotations

import numpy as np


def real_photographs() -> tuple[list[str], list[np.ndarray]]:
    """Real photographs that are not dermoscopy, available offline: scikit-image's and scikit-learn's samples."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
             "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "stereo_motorcycle", "page",
             "retina", "rocket", "text"]
    images = []
    for name in names:
        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo_motorcycle: (left, right, disparity)
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (255 * (image.astype(float) / max(float(image.max()), 1))).astype(np.uint8)
        images.append(np.ascontiguousarray(np.repeat(image[..., None], 3, 2) if image.ndim == 2 else image[..., :3]))
    samples = load_sample_images()
    for name, image in zip(("sklearn_china", "sklearn_flower"), samples.images):
        names.append(name)
        images.append(np.ascontiguousarray(image))
    return names, images


def synthetic_non_dermoscopic(n: int = 32, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """Images no dermatoscope produces: noise, flat colours, stripes, text-like blocks."""
    rng = np.random.default_rng(seed)
    h, w = 300, 400
    names, images = [], []
    for i in range(n):
        kind = ("noise", "flat", "stripes", "blocks")[i % 4]
        if kind == "noise":
            img = rng.integers(0, 256, (h, w, 3))
        elif kind == "flat":
            img = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        elif kind == "stripes":
            img = np.broadcast_to(np.where((np.arange(w)[None, :, None] // rng.integers(4, 20)) % 2 == 0, 255,
                                           rng.integers(0, 120, 3)), (h, w, 3))
        else:
            img = np.full((h, w, 3), 255)
            for _ in range(60):
                y, x = rng.integers(0, h - 10), rng.integers(0, w - 30)
                img[y:y + 6, x:x + rng.integers(5, 30)] = 0
        names.append(f"{kind}_{i}")
        images.append(np.ascontiguousarray(img, dtype=np.uint8))
    return names, images


def synthetic_screens_and_drawings(n: int = 40, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """Uploads that are not photographs at all, the kinds a user sends by mistake: colour noise, screenshots (a
    window bar, text lines, buttons on a light page) and drawings (a filled brown ellipse, like a lesion, on a plain
    background of any colour, skin-like included)."""
    import cv2

    rng = np.random.default_rng(seed)
    names, images = [], []
    for i in range(n):
        kind = ("noise", "screenshot", "drawing", "drawing")[i % 4]
        h, w = int(rng.integers(200, 500)), int(rng.integers(250, 650))
        if kind == "noise":
            img = rng.normal(rng.uniform(60, 200, 3), rng.uniform(20, 90), (h, w, 3)) if rng.random() < 0.5 \
                else rng.integers(0, 256, (h, w, 3))
        elif kind == "screenshot":
            img = np.full((h, w, 3), rng.integers(225, 256), dtype=np.uint8)
            bar = int(rng.integers(20, 50))
            img[:bar] = rng.integers(0, 256, 3)
            for y in range(bar + 15, h - 12, int(rng.integers(14, 24))):
                x = int(rng.integers(10, 40))
                while x < w - 40 and rng.random() < 0.9:
                    word = int(rng.integers(10, 60))
                    img[y:y + 7, x:x + word] = rng.integers(0, 90)
                    x += word + 6
            for _ in range(int(rng.integers(0, 4))):
                y, x = int(rng.integers(bar, h - 30)), int(rng.integers(0, w - 90))
                img[y:y + 24, x:x + 80] = rng.integers(0, 256, 3)
        else:
            skin_like = rng.random() < 0.5
            background = rng.uniform((190, 140, 110), (240, 200, 170)) if skin_like else rng.integers(0, 256, 3)
            img = np.full((h, w, 3), background, dtype=np.float64)
            brown = rng.uniform((60, 35, 20), (150, 100, 80))
            axes = (int(w * rng.uniform(0.1, 0.35)), int(h * rng.uniform(0.1, 0.35)))
            cv2.ellipse(img, (w // 2 + int(rng.integers(-w // 8, w // 8)), h // 2 + int(rng.integers(-h // 8, h // 8))),
                        axes, float(rng.uniform(0, 180)), 0, 360, tuple(float(c) for c in brown), -1, cv2.LINE_AA)
        names.append(f"{kind}_{i}")
        images.append(np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8)))
    return names, images
