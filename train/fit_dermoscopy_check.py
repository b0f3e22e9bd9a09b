"""Fit the dermoscopy check (core.decisions.dermoscopy_check): WEIGHTS/dermoscopy_check.safetensors and the model
card's `dermoscopy_check` section (`dermoscopy_check` returns them; train.calibrate merges them with the other steps';
this command alone merges them into the card in WEIGHTS).

    python -m train.fit_dermoscopy_check --data-dir ../shared/data --weights weights    # one step of train.calibrate

Data, each image made into the classifier's input exactly as the Analyzer makes it, then ImageNet features:
- dermoscopy: HAM10000 + ISIC 2017 with the project's lesion-grouped split (train / val / test), each image tagged
  with its acquisition source (HAM10000's `dataset` column; ISIC 2017 is one source);
- clinical photographs: DermNet (`clinical/`), grouped by diagnosis page (category) into FOLDS folds. The DermNet
  watermark sits in the lower-left corner, so training uses only views without it (the top TOP_SHARE of the image,
  the right RIGHT_SHARE, and seeded random crops of the top-right region); every figure is measured on both the
  whole watermarked photo and its watermark-free top part;
- not skin: scikit-image / scikit-learn sample photographs, whole and in seeded random crops, grouped by photo.

Protocol: the regularisation C is chosen by category-grouped cross-fitting: for each fold, a check fitted without that
fold's categories / photos, its threshold fitted on dermoscopy validation, its refusal rate measured on the held-out
fold. The shipped check is fitted on everything but dermoscopy val / test; its threshold is the lowest per-source
REFUSE_SHARE quantile of P(dermoscopy) over the validation images of each dermoscopy source, so that no source has more
than REFUSE_SHARE refused. Dermoscopy test images are only measured. Clinical and not-skin figures are out of fold
(categories never seen by the check that scored them), with bootstrap CIs grouped by category / photo.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.decisions.dermoscopy_check import KINDS, DermoscopyCheck
from core.analysis.metrics import bootstrap_interval
from core.decisions.model_card import read_card_json
from core.io.weights_io import save_weights
from train.card_io import Split, write_sections

# ---------------------------------------------------------------- config (CLI overrides below)
SEED = 0
FOLDS = 5
C_GRID = (0.003, 0.01, 0.03, 0.1)
REFUSE_SHARE = 0.01            # at most this share of any dermoscopy source's validation images refused
TOP_SHARE = 0.72               # the top 72 % of a DermNet photo holds no watermark (lower-left logo / text)
RIGHT_SHARE = 0.55             # nor does its right 55 %
RANDOM_CROPS = 2               # extra watermark-free random crops per clinical training photo
PHOTO_CROPS = 8                # random crops per non-skin photograph
HELD_OUT_SHARE = 0.1           # DermNet categories never seen by the shipped check (its test photos)
HELD_OUT_PHOTOS = ("astronaut", "coffee", "sklearn_china")  # non-skin photos never seen by the shipped check
BATCH = 64
CHECK_FILE = "dermoscopy_check.safetensors"
# DermNet categories that are pigmented lesions, the clinical photos most like dermoscopy of a worrying mole.
PIGMENTED = re.compile(r"melanom|naev|nevus|nevi|lentig|seborrh|pigment|mole|freckle|dermatofibroma|blue", re.I)


def dermoscopy_samples(data_dir: Path, split: Split) -> pd.DataFrame:
    from core.data.datasets import load_manifest

    manifest = split.apply(load_manifest(data_dir))
    manifest = manifest[manifest["split"] != ""]
    sources = pd.read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv").set_index("image_id")["dataset"]
    acquisition = manifest["image_id"].map(sources).where(manifest["source"] == "ham10000", "isic2017")
    return pd.DataFrame({"key": "derm/" + manifest["image_id"], "path": manifest["image_path"], "crop": "whole",
                         "kind": "dermoscopy", "role": manifest["split"].to_numpy(), "source": acquisition.to_numpy(),
                         "group": manifest["lesion_id"].fillna(manifest["image_id"]).to_numpy(), "pigmented": False})


def clinical_samples(data_dir: Path, seed: int) -> pd.DataFrame:
    labels = pd.read_csv(data_dir / "clinical" / "labels.csv")
    categories = np.random.default_rng(seed).permutation(labels["category"].unique())
    n_held_out = round(HELD_OUT_SHARE * len(categories))
    role_of = {c: "test" if i < n_held_out else f"fold{i % FOLDS}" for i, c in enumerate(categories)}
    rows = []
    for image_id, category in zip(labels["image_id"], labels["category"]):
        crops = ["whole", "top", "right"] + [f"random{k}" for k in range(RANDOM_CROPS)]
        for crop in crops:
            rows.append({"key": f"clinical/{image_id}/{crop}", "path": str(data_dir / "clinical" / "images" / f"{image_id}.jpg"),
                         "crop": crop, "kind": "clinical_photo", "role": role_of[category], "source": "dermnet",
                         "group": category, "pigmented": bool(PIGMENTED.search(category))})
    return pd.DataFrame(rows)


def photo_samples(names: list[str]) -> pd.DataFrame:
    role_of = {name: "test" if name in HELD_OUT_PHOTOS else f"fold{i % FOLDS}" for i, name in enumerate(names)}
    rows = [{"key": f"photo/{name}/{crop}", "path": name, "crop": crop, "kind": "not_skin",
             "role": role_of[name], "source": "photos", "group": name, "pigmented": False}
            for name in names for crop in ["whole"] + [f"random{k}" for k in range(PHOTO_CROPS)]]
    return pd.DataFrame(rows)


def crop_view(rgb: np.ndarray, crop: str, key: str) -> np.ndarray:
    """The named view of an image: whole, top (TOP_SHARE of the rows), right (RIGHT_SHARE of the columns), or a
    random crop (seeded by the sample key) of 40-90 % of each side inside the top-right watermark-free region."""
    h, w = rgb.shape[:2]
    if crop == "whole":
        return rgb
    if crop == "top":
        return rgb[: int(h * TOP_SHARE)]
    if crop == "right":
        return rgb[:, w - int(w * RIGHT_SHARE):]
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:12], 16))
    ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
    top_limit = int(h * TOP_SHARE) if key.startswith("clinical/") else h
    y = int(rng.integers(0, max(1, top_limit - ch + 1))) if ch <= top_limit else 0
    x = int(rng.integers(0, w - cw + 1))
    return rgb[y:y + min(ch, top_limit), x:x + cw]


def features(samples: pd.DataFrame, photos: dict[str, np.ndarray], card: dict, cache: Path) -> np.ndarray:
    """ImageNet features of every sample's view, made into the classifier input as the Analyzer makes it (the card's
    preprocessing and input size)."""
    from core.decisions.ood import imagenet_backbone
    from core.imaging.preprocess import Preprocessing, network_image
    from core.imaging.tensors import normalize_batch
    from core.io.intake import load_image

    done: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as stored:
            done = dict(zip(stored["keys"], stored["features"]))
    todo = samples[~samples["key"].isin(done)]
    if len(todo):
        preprocessing = Preprocessing.from_card(card["preprocessing"], "classifier")
        size = (card["input_size"]["classifier"]["height"], card["input_size"]["classifier"]["width"])
        backbone = imagenet_backbone()
        started, images, keys = time.time(), {}, []
        for i, (key, path, crop) in enumerate(zip(todo["key"], todo["path"], todo["crop"])):
            if path not in images:
                images = {path: photos[path] if path in photos else load_image(Path(path).read_bytes())}
            keys.append((key, network_image(np.ascontiguousarray(crop_view(images[path], crop, key)), size,
                                            preprocessing)))
            if len(keys) == BATCH or i == len(todo) - 1:
                with torch.inference_mode():
                    out = backbone(normalize_batch(torch.from_numpy(np.stack([k[1] for k in keys])))).float().numpy()
                done.update({k: f.astype(np.float16) for (k, _), f in zip(keys, out)})
                keys = []
                if (i + 1) % (BATCH * 20) == 0 or i == len(todo) - 1:
                    print(f"features {i + 1}/{len(todo)} ({(i + 1) / (time.time() - started):.0f} img/s)", flush=True)
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cache, keys=np.array(list(done)), features=np.stack(list(done.values())))
    return np.stack([done[k] for k in samples["key"]]).astype(np.float32)


def fit(x: np.ndarray, kinds: np.ndarray, c: float, seed: int) -> DermoscopyCheck:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit((x - mean) / scale, np.array([KINDS.index(k) for k in kinds]))
    return DermoscopyCheck(mean, scale, model.coef_, model.intercept_, threshold=0.0)


def fit_threshold(check: DermoscopyCheck, x_val: np.ndarray, sources: np.ndarray) -> DermoscopyCheck:
    p = check.probabilities(x_val)[:, 0]
    threshold = min(float(np.quantile(p[sources == s], REFUSE_SHARE)) for s in np.unique(sources))
    return DermoscopyCheck(check.feature_mean, check.feature_scale, check.weight, check.bias, threshold)


def refused_share(kinds: np.ndarray, groups: np.ndarray) -> dict:
    refused = (kinds != "dermoscopy").astype(float)
    statistic = lambda idx: float(refused[idx].mean())  # noqa: E731
    low, high = bootstrap_interval(statistic, len(refused), groups)
    return {"n": int(len(refused)), "refused_share": float(refused.mean()), "ci95": [low, high]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--cache", type=Path, default=Path("runs/dermoscopy_check/features.npz"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--split-file", default="", help="default: the split of the card in WEIGHTS")
    args = parser.parse_args(argv)
    card = read_card_json(args.weights)
    sections = dermoscopy_check(args.data_dir, args.weights, card, Split.of_args(args.split_file, args.weights),
                                args.cache, args.seed)
    write_sections(args.weights, sections)
    return sections


def dermoscopy_check(data_dir: Path, weights: Path, card: dict, split: Split, cache: Path, seed: int = SEED,
                     max_images: int = 0) -> dict:
    """Fit the check (on `card`'s classifier input and the model's split), save WEIGHTS/dermoscopy_check.safetensors;
    returns the card sections {"dermoscopy_check": ..., "files": {the check's file}}. max_images > 0: at most that
    many samples per kind, role and source (tests)."""
    from train.ood_probes import real_photographs

    started = time.time()
    names, images = real_photographs()
    photos = dict(zip(names, images))
    samples = pd.concat([dermoscopy_samples(data_dir, split), clinical_samples(data_dir, seed),
                         photo_samples(names)], ignore_index=True)
    if max_images:
        samples = samples.groupby(["kind", "role", "source"], sort=False).head(max_images).reset_index(drop=True)
    x = features(samples, photos, card, cache)
    kind, role, crop = samples["kind"].to_numpy(), samples["role"].to_numpy(), samples["crop"].to_numpy()
    source, group = samples["source"].to_numpy(), samples["group"].to_numpy()
    derm_train, derm_val = role == "train", role == "val"
    # training views: dermoscopy whole; clinical without the watermark; not-skin photos whole and cropped
    trainable = np.where(kind == "clinical_photo", crop != "whole", True)
    measured_view = {"watermarked": crop == "whole", "watermark_cropped": crop == "top"}

    def cross_fitted(c: float) -> np.ndarray:
        """Out-of-fold kinds of every clinical / not-skin sample: a check fitted without its fold."""
        out = np.full(len(samples), "", dtype=object)
        for k in range(FOLDS):
            held = role == f"fold{k}"
            train = (derm_train | ((kind != "dermoscopy") & ~held & (role != "test"))) & trainable
            check = fit_threshold(fit(x[train], kind[train], c, seed), x[derm_val], source[derm_val])
            out[held] = check.kinds(check.probabilities(x[held]))
        return out

    selection = {}
    for c in C_GRID:
        oof = cross_fitted(c)
        clinical = (kind == "clinical_photo") & (crop == "top")
        selection[str(c)] = float((oof[clinical] != "dermoscopy").mean())
        print(f"C={c}: out-of-fold clinical photos (watermark cropped) refused {selection[str(c)]:.3f}", flush=True)
    best_c = float(max(C_GRID, key=lambda c: selection[str(c)]))
    oof = cross_fitted(best_c)

    train = (derm_train | ((kind != "dermoscopy") & (role != "test"))) & trainable
    check = fit_threshold(fit(x[train], kind[train], best_c, seed), x[derm_val], source[derm_val])
    shipped_kinds = check.kinds(check.probabilities(x))

    results: dict[str, dict] = {}
    for split in ("val", "test"):
        for s in sorted(np.unique(source[kind == "dermoscopy"])):
            rows = (kind == "dermoscopy") & (role == split) & (source == s)
            results[f"dermoscopy_{split}_{s}"] = refused_share(shipped_kinds[rows], group[rows])
    pigmented = samples["pigmented"].to_numpy()
    for view, rows_of_view in measured_view.items():
        for name, rows in (("clinical_photos", kind == "clinical_photo"),
                           ("clinical_photos_pigmented", (kind == "clinical_photo") & pigmented),
                           ("not_skin_photos", kind == "not_skin")):
            # out of fold: cross-fitted checks on the fold categories; held out: the shipped check on its test ones
            for what, verdicts, among in (("out_of_fold", oof, role != "test"), ("held_out", shipped_kinds, role == "test")):
                chosen = rows & rows_of_view & among
                if chosen.any():
                    entry = refused_share(verdicts[chosen], group[chosen])
                    entry["as_clinical_photo_share"] = float((verdicts[chosen] == "clinical_photo").mean())
                    results[f"{name}_{view}_{what}"] = entry

    path = weights / CHECK_FILE
    file_entry = save_weights(check.tensors(), path, half=False,
                              metadata={"what": "dermoscopy check: logistic regression on ImageNet EfficientNet-Lite0 "
                                                "features over " + ", ".join(KINDS)})
    section = {
        "threshold": check.threshold, "kinds": list(KINDS), "c": best_c, "selection_refused_share": selection,
        "results": results, "n_training_images": {k: int((train & (kind == k)).sum()) for k in KINDS},
        "held_out_clinical_images": sorted({key.split("/")[1] for key in samples["key"][(kind == "clinical_photo") & (role == "test")]}),
        "held_out_photos": list(HELD_OUT_PHOTOS),
        "method": (f"multinomial logistic regression (C={best_c}, balanced classes) on standardised ImageNet "
                   "EfficientNet-Lite0 features of the classifier input; refused when P(dermoscopy) is below the "
                   f"lowest per-source {REFUSE_SHARE:.0%} quantile of dermoscopy validation images (HAM10000's four "
                   "sources, ISIC 2017); clinical: DermNet, watermark corner cropped away for training, "
                   f"{FOLDS}-fold category-grouped cross-fitting for every clinical / not-skin figure"),
        "seconds": round(time.time() - started, 1)}
    print(json.dumps({"threshold": check.threshold, "c": best_c, "results": results}, indent=1))
    return {"dermoscopy_check": section, "files": {CHECK_FILE: file_entry}}


if __name__ == "__main__":
    main()
