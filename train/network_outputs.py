"""Run trained networks over a split once and keep what the evaluation needs (cached on disk by content).

For every image: mask-CN's logits under each of the 8 dihedral views (the decision rule picks how many to average),
view 0's pooled features, the chroma and ImageNet features of the OOD check, the image-only classifier's logits
(when it was trained), and, for splits with reference masks, per-image Dice / Jaccard of every segmenter at the reference
mask's own resolution (plain and with flip test-time augmentation). The forward pass is core.models.mbdcnn.mbdcnn_forward,
the Analyzer's own.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from core.models.mbdcnn import mbdcnn_forward
from core.analysis.metrics import dice, jaccard
from core.models import create_model
from core.decisions.ood import chroma, imagenet_backbone
from core.imaging.preprocess import Preprocessing, mask_to_image, network_box
from core.imaging.tensors import normalize_batch
from core.imaging.tta import ALL_VIEWS, FLIP_VIEWS, view
from core.io.weights_io import sha256_of, weights_metadata
from train.cache import load_arrays
from train.stages import parse_size

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "lesionlens" / "outputs"
BATCH = 32
# segmentation variants scored per image: name -> (network, localisation map fed to it)
SEGMENTERS = ("coarse_sn", "enhanced_sn", "coarse_sn_more", "enhanced_sn_zero")


@dataclass
class Network:
    model: torch.nn.Module
    path: Path
    meta: dict

    @property
    def size(self) -> tuple[int, int]:
        return parse_size(self.meta["input_size"])

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**json.loads(self.meta["preprocessing"]))


def load_network(path: Path) -> Network:
    meta = weights_metadata(path)
    model = create_model(meta["arch"], meta.get("backbone", "efficientnet_lite0"), pretrained=None)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return Network(model.eval().requires_grad_(False).to(memory_format=torch.channels_last), Path(path), meta)


def _cache_file(nets: dict[str, Network], table: pd.DataFrame, options: dict) -> Path:
    spec = json.dumps({"nets": {k: sha256_of(n.path) for k, n in sorted(nets.items())}, "options": options,
                       "rows": list(zip(table["image_path"], table["mask_path"]))}, sort_keys=True)
    return CACHE_DIR / f"{hashlib.sha1(spec.encode()).hexdigest()[:20]}.npz"


def _reference(table: pd.DataFrame, i: int, preprocessing: Preprocessing) -> tuple[np.ndarray, tuple]:
    """The reference mask at its own resolution and the field-of-view box of its image (at that resolution)."""
    mask = cv2.imread(table["mask_path"].iloc[i], cv2.IMREAD_GRAYSCALE) > 127
    rgb = cv2.imread(table["image_path"].iloc[i], cv2.IMREAD_COLOR)
    if rgb.shape[:2] != mask.shape:
        rgb = cv2.resize(rgb, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
    return mask, network_box(np.ascontiguousarray(rgb[:, :, ::-1]), preprocessing)


def split_outputs(nets: dict[str, Network], table: pd.DataFrame, segmentation: bool, use_cache: bool = True,
                  views: tuple[int, ...] = ALL_VIEWS) -> dict:
    """Outputs for the rows of `table` (see the module docstring). nets: coarse_sn, mask_cn, enhanced_sn and
    optionally classifier, coarse_sn_more, enhanced_sn_zero. segmentation: score the segmenters (needs masks).
    views: mask-CN's test-time-augmentation views to compute (the training split needs view 0 only)."""
    options = {"segmentation": segmentation, "views": list(views), "version": 2}
    file = _cache_file(nets, table, options)
    if use_cache and file.is_file():
        with np.load(file) as data:
            return {k: data[k] for k in data.files}
    coarse, mask_cn, enhanced = nets["coarse_sn"], nets["mask_cn"], nets["enhanced_sn"]
    seg_u8, _ = load_arrays(table, coarse.size, coarse.preprocessing, False, use_cache)
    cls_u8, _ = load_arrays(table, mask_cn.size, mask_cn.preprocessing, False, use_cache)
    out: dict[str, list] = {k: [] for k in ("logits", "pooled", "chroma", "imagenet", "baseline_logits")}
    generic = imagenet_backbone()
    scores: dict[str, list] = {}
    for start in tqdm(range(0, len(table), BATCH), desc=f"networks on {len(table)} images", leave=False):
        rows = slice(start, start + BATCH)
        seg_x = normalize_batch(torch.from_numpy(np.array(seg_u8[rows])))
        cls_x = normalize_batch(torch.from_numpy(np.array(cls_u8[rows])))
        with torch.inference_mode():
            chain = mbdcnn_forward(coarse.model, mask_cn.model, enhanced.model, seg_x, cls_x, views, (0,),
                                   with_enhanced=segmentation)
            out["logits"].append(chain["logits"].numpy())
            out["pooled"].append(chain["pooled"].half().numpy())
            out["chroma"].append(np.array([chroma(np.ascontiguousarray(im)) for im in cls_u8[rows]]))
            out["imagenet"].append(generic(cls_x).half().numpy())
            if "classifier" in nets:
                out["baseline_logits"].append(torch.stack([nets["classifier"].model(view(cls_x, k)).float()
                                                           for k in views]).numpy())
            if segmentation:
                flips = mbdcnn_forward(coarse.model, mask_cn.model, enhanced.model, seg_x, cls_x, (0,), FLIP_VIEWS)
                probs = {"coarse_sn": chain["coarse"], "enhanced_sn": chain["enhanced"],
                         "coarse_sn_tta": flips["coarse"], "enhanced_sn_tta": flips["enhanced"]}
                if "coarse_sn_more" in nets:
                    probs["coarse_sn_more"] = torch.sigmoid(nets["coarse_sn_more"].model(seg_x).float())
                if "enhanced_sn_zero" in nets:
                    loc = torch.zeros_like(chain["localisation"])
                    probs["enhanced_sn_zero"] = torch.sigmoid(nets["enhanced_sn_zero"].model(seg_x, loc).float())
                for i in range(seg_x.shape[0]):
                    reference, box = _reference(table, start + i, coarse.preprocessing)
                    for name, p in probs.items():
                        predicted = mask_to_image(p[i, 0].numpy(), box, reference.shape) > 0.5
                        scores.setdefault(name, []).append((dice(predicted, reference), jaccard(predicted, reference)))
    result = {"logits": np.concatenate(out["logits"], axis=1), "pooled": np.concatenate(out["pooled"]),
              "chroma": np.concatenate(out["chroma"]), "imagenet": np.concatenate(out["imagenet"])}
    if out["baseline_logits"]:
        result["baseline_logits"] = np.concatenate(out["baseline_logits"], axis=1)
    for name, values in scores.items():
        result[f"seg_{name}"] = np.array(values, dtype=np.float32)  # (N, 2): Dice, Jaccard
    if use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(".tmp.npz")
        np.savez(tmp, **result)
        tmp.replace(file)
    return result


def image_outputs(nets: dict[str, Network], images: list[np.ndarray]) -> dict:
    """logits (8 views), pooled features, chroma and ImageNet features of in-memory RGB images of any size, made into
    network inputs exactly as the Analyzer makes them (non-dermoscopy photographs, synthetic images, resolution)."""
    from core.imaging.preprocess import network_image

    coarse, mask_cn, enhanced = nets["coarse_sn"], nets["mask_cn"], nets["enhanced_sn"]
    generic = imagenet_backbone()
    logits, pooled, colour, features = [], [], [], []
    for rgb in images:
        box = network_box(rgb, mask_cn.preprocessing)
        seg_u8 = network_image(rgb, coarse.size, coarse.preprocessing, box)
        cls_u8 = network_image(rgb, mask_cn.size, mask_cn.preprocessing, box)
        cls_x = normalize_batch(torch.from_numpy(cls_u8)[None])
        with torch.inference_mode():
            chain = mbdcnn_forward(coarse.model, mask_cn.model, enhanced.model, normalize_batch(torch.from_numpy(seg_u8)[None]),
                                   cls_x, ALL_VIEWS, (0,), with_enhanced=False)
            features.append(generic(cls_x).numpy())
        logits.append(chain["logits"].numpy())
        pooled.append(chain["pooled"].numpy())
        colour.append(chroma(cls_u8))
    return {"logits": np.concatenate(logits, axis=1), "pooled": np.concatenate(pooled), "chroma": np.array(colour),
            "imagenet": np.concatenate(features)}
