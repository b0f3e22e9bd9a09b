"""Images that are not dermoscopy, for testing the not-dermoscopy check (train.evaluate's OOD figures,
train.fit_dermoscopy_check): real photographs available offline and synthetic images no dermatoscope produces.
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
