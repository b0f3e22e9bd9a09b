"""A lever for the dermoscopy check, measured held out before anything ships: a fine-tuned CNN against the shipped
recipe (a logistic regression on frozen ImageNet EfficientNet-Lite0 features), both trained on the same images and
scored on the same held-out ones.

    python -m calibration.dermoscopy_check_cnn --data-dir ../shared/data --threads 1 --out runs/check_cnn

Held out from both: PAD-UFES-20 (a collection of camera photos never seen), ISIC 2017 and Imperial College London's
acral images (dermoscopy sources never seen), the held-out not-skin photographs. Everything else of
calibration.fit_dermoscopy_check's samples trains both (dermoscopy subsampled to 9,000 views for the CNN). The CNN is
EfficientNet-Lite0 from its ImageNet weights, stem and first 4 stages frozen, 3 classes (dermoscopy, camera photo,
not skin), 2 epochs of AdamW with a cosine schedule, bf16 autocast, flips. Each recipe's refusal threshold is the
lowest 1 % quantile of P(dermoscopy) over the two held-out dermoscopy sources (as the shipped check chooses its own,
here on the test images themselves, so the figures are an optimistic bound for both alike); its "may be a camera
photo" band the 10 % quantile. Writes result.json (shares with Wilson and patient-bootstrap 95 % intervals) and
scores.csv (every held-out P(dermoscopy)) into --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from calibration.card_io import Split, read_card_json
from calibration.check_views import crop_view
from calibration.fit_dermoscopy_check import SEED, all_samples, features, rate
from core.imaging.preprocess import Preprocessing, network_box, network_image
from core.imaging.tensors import normalize_batch
from core.io.intake import load_image

HELD_DERMOSCOPY = ("isic2017", "acral_imperial")
HELD_PHOTOS = "pad_ufes20"
KINDS = {"dermoscopy": 0, "clinical_photo": 1, "not_skin": 2}
DERMOSCOPY_VIEWS = 9000
EPOCHS, BATCH, LR, FROZEN_STAGES = 2, 48, 5e-4, 4


def held_out_split(samples: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training views, held-out whole images)."""
    held = samples["collection"].isin(HELD_DERMOSCOPY + (HELD_PHOTOS,)) | (
        (samples["role"] == "test") & (samples["kind"] == "not_skin"))
    return samples[~held].reset_index(drop=True), samples[held & (samples["view"] == "whole")].reset_index(drop=True)


def render(rows: pd.DataFrame, in_memory: dict, size: tuple[int, int], preprocessing: Preprocessing) -> np.ndarray:
    """Each row's view as the classifier input (uint8, the card's preprocessing), rows read in their order."""
    out, last, image = [], None, None
    for r in rows.itertuples(index=False):
        if r.path != last:
            last = r.path
            image = in_memory[r.path] if r.path in in_memory else load_image(Path(r.path).read_bytes())
        view = np.ascontiguousarray(crop_view(image, r.view, r.key, r.watermarked))
        out.append(network_image(view, size, preprocessing, network_box(view, preprocessing)))
    return np.stack(out)


def as_batch(x: np.ndarray) -> torch.Tensor:
    return normalize_batch(torch.from_numpy(np.ascontiguousarray(x))).contiguous(memory_format=torch.channels_last)


def train_cnn(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> torch.nn.Module:
    """Lite0 from ImageNet, its stem and first FROZEN_STAGES stages frozen, fine-tuned on (x, y)."""
    import timm

    from core.models.pretrained import load_imagenet

    net = timm.create_model("efficientnet_lite0", num_classes=len(KINDS))
    load_imagenet(net, "efficientnet_lite0", skip_suffixes=("classifier.weight", "classifier.bias"))
    frozen = [net.conv_stem, net.bn1, *net.blocks[:FROZEN_STAGES]]
    for p in (p for m in frozen for p in m.parameters()):
        p.requires_grad_(False)
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=LR, weight_decay=1e-2)
    counts = np.bincount(y, minlength=len(KINDS))
    weight = torch.tensor((counts.sum() / (len(KINDS) * counts)) ** 0.5, dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)
    per_epoch = len(x) // BATCH
    steps, step = EPOCHS * per_epoch, 0
    for epoch in range(EPOCHS):
        net.train()
        perm, started = rng.permutation(len(x)), time.time()
        for i in range(per_epoch):
            idx = perm[i * BATCH:(i + 1) * BATCH]
            xb = x[idx].copy()
            flip = rng.random(len(idx)) < 0.5
            xb[flip] = xb[flip][:, :, ::-1]
            flip = rng.random(len(idx)) < 0.5
            xb[flip] = xb[flip][:, ::-1]
            for group in opt.param_groups:
                group["lr"] = LR * 0.5 * (1 + np.cos(np.pi * step / steps))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(net(as_batch(xb)).float(), torch.from_numpy(y[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if i % 50 == 0:
                print(f"epoch {epoch} step {i}/{per_epoch} loss {loss.item():.3f} "
                      f"{(i + 1) * BATCH / (time.time() - started):.0f} img/s", flush=True)
    return net.eval()


def report(p: np.ndarray, test: pd.DataFrame) -> dict:
    """AUC dermoscopy vs PAD-UFES-20, and what the two thresholds refuse and flag on each held-out kind."""
    coll = test["collection"].to_numpy()
    dermoscopy, photos = np.isin(coll, HELD_DERMOSCOPY), coll == HELD_PHOTOS
    pigmented = photos & test["pigmented"].to_numpy().astype(bool)
    groups = test["group"].to_numpy()
    refuse = min(np.quantile(p[coll == s], 0.01) for s in HELD_DERMOSCOPY)
    flag = min(np.quantile(p[coll == s], 0.10) for s in HELD_DERMOSCOPY)

    def share(mask, threshold):
        return rate(p[mask] < threshold, groups[mask])

    return {"auc_dermoscopy_vs_pad_ufes20": float(roc_auc_score(np.r_[np.ones(dermoscopy.sum()), np.zeros(photos.sum())],
                                                                 np.r_[p[dermoscopy], p[photos]])),
            "refuse_below": float(refuse), "flag_below": float(flag),
            "pad_ufes20_refused": share(photos, refuse), "pad_ufes20_refused_or_flagged": share(photos, flag),
            "pad_ufes20_pigmented_refused": share(pigmented, refuse),
            "dermoscopy_refused": {s: share(coll == s, refuse) for s in HELD_DERMOSCOPY}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/dermoscopy_check/features.npz"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/check_cnn"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    card = read_card_json(args.weights)
    samples, in_memory = all_samples(args.data_dir, Split.of_args("", args.weights), SEED)
    train, test = held_out_split(samples)
    y = train["kind"].map(KINDS).to_numpy()

    logistic = LogisticRegression(C=0.01, max_iter=2000).fit(features(train, in_memory, card, args.cache), y)
    p_logistic = logistic.predict_proba(features(test, in_memory, card, args.cache))[:, 0]

    rng = np.random.default_rng(0)
    dermoscopy = np.flatnonzero(y == 0)
    pick = np.concatenate([rng.choice(dermoscopy, min(len(dermoscopy), DERMOSCOPY_VIEWS), replace=False),
                           np.flatnonzero(y != 0)])
    rows = train.iloc[pick].sort_values("path", kind="stable")
    preprocessing = Preprocessing.from_card(card["preprocessing"], "classifier")
    size = (card["input_size"]["classifier"]["height"], card["input_size"]["classifier"]["width"])
    net = train_cnn(render(rows, in_memory, size, preprocessing), rows["kind"].map(KINDS).to_numpy(), rng)
    test_x = render(test, in_memory, size, preprocessing)
    with torch.inference_mode():
        p_cnn = np.concatenate([torch.softmax(net(as_batch(test_x[i:i + 64])).float(), 1)[:, 0].numpy()
                                for i in range(0, len(test_x), 64)])

    result = {"logistic_on_imagenet_features": report(p_logistic, test), "fine_tuned_lite0": report(p_cnn, test),
              "n_training_views": {"logistic": len(train), "cnn": len(rows)},
              "n_held_out": test.groupby("collection").size().to_dict()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    pd.DataFrame({"key": test["key"], "collection": test["collection"], "p_logistic": p_logistic,
                  "p_cnn": p_cnn}).to_csv(args.out / "scores.csv", index=False)
    print(json.dumps({k: v for k, v in result.items() if k != "n_held_out"}, indent=1))
    return result


if __name__ == "__main__":
    main()
