"""Fit the dermoscopy check (core.decisions.dermoscopy_check): WEIGHTS/dermoscopy_check.safetensors and the model
card's `dermoscopy_check` section (`dermoscopy_check` returns them; calibration.calibrate merges them with the other
steps'; this command alone merges them into the card in WEIGHTS).

    OMP_NUM_THREADS=1 python -m calibration.fit_dermoscopy_check --data-dir ../shared/data --weights weights

`fit_dermoscopy_check(data_dir, card, split, cache)` returns the check and the card's `dermoscopy_check` section;
`dermoscopy_check` saves the check and returns the card sections; `main` is the thin CLI. Every image is made into
the classifier's input exactly as the Analyzer makes it, then into ImageNet features (cached on disk per view, so a
re-run only fits).

Data (calibration.check_views makes the views):
- dermoscopy, tagged with its acquisition source: HAM10000's four sources and ISIC 2017 with the project's
  lesion-grouped split (train / val / test), and acral dermoscopy (`acral/`, palms, soles, nails) grouped by
  `group_id` into the same three roles, one source per contributor. Trained on whole images plus, for a share of
  them, a view with a dermatoscope's or a clinic's marks (vignette or zoom, marker ink, ruler, colour cast);
- clinical (camera) photographs: DermNet (`clinical/`, watermarked: trained only on views without the watermark
  corner, measured whole and cropped) grouped by diagnosis page, and PAD-UFES-20 (`pad_ufes20/`, smartphone photos,
  no watermark) grouped by patient; whole images plus seeded random crops;
- not skin: scikit-image / scikit-learn sample photographs (whole and cropped), and synthetic uploads that are not
  photographs (colour noise, screenshots, drawn ellipses).

Held out the way a new input arrives (every figure is from a check that never saw the images it scores):
- dermoscopy by acquisition source: a check fitted without one source (each HAM10000 source, ISIC 2017, each acral
  contributor, and all acral at once) scores that source;
- clinical photos by collection: fitted without PAD-UFES-20, scoring it, and without DermNet, scoring it;
- clinical photos by patient / diagnosis page and not-skin images by picture: FOLDS-fold grouped cross-fitting.
The threshold on P(dermoscopy) is the lowest per-source REFUSE_SHARE quantile of the held-out-source scores of the
train and val roles of every dermoscopy source but REPORTED_ONLY (never a test role: those are only measured). Where that threshold
leaves clinical photos through, the band below a second threshold, chosen the same way for FLAG_SHARE of every
held-out source, greys the result with "this may be a camera photo" instead of refusing.
C is chosen on the grouped cross-fitting (clinical photos refused at the held-out-source threshold); the
by-collection figures are never used to choose anything. The shipped check is fitted on every role but the test
roles (dermoscopy test split, DermNet categories / PAD patients / photos kept out for the test suite).
"""
from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.analysis.metrics import bootstrap_interval, wilson_interval
from core.data.acquisition import ACRAL_CONTRIBUTORS, ACRAL_OTHER
from core.decisions.dermoscopy_check import KINDS, DermoscopyCheck, kinds_at
from core.decisions.model_card import read_card_json
from core.io.weights_io import save_weights
from calibration.card_io import Split, write_sections
from calibration.check_views import crop_view

# ---------------------------------------------------------------- config (CLI overrides below)
SEED = 0
FOLDS = 5
C_GRID = (0.01, 0.03)
REFUSE_SHARE = 0.01             # at most this share of any held-out dermoscopy source's train/val images refused
FLAG_SHARE = 0.10               # at most this share of any held-out dermoscopy source in the "may be a camera photo" band
CLINICAL_CROPS = 2              # seeded random crops per clinical photo (DermNet: inside its watermark-free region)
CLINICAL_ZOOMS = 2              # seeded close-up crops (20-45 % of each side) per clinical photo
PHOTO_CROPS = 8                 # random crops per non-skin photograph
ARTEFACT_SHARE = 0.35           # share of HAM10000 / ISIC 2017 dermoscopy images with an extra artefacts view
ARTEFACTS_VIEW = "artefacts1"   # the view's name keys its cached features: a new name whenever calibration.check_views'
                                # artefacts change
HELD_OUT_SHARE = 0.1            # DermNet categories / PAD patients never seen by the shipped check (its test photos)
HELD_OUT_PHOTOS = ("astronaut", "coffee", "sklearn_china")  # non-skin photos never seen by the shipped check
SYNTHETIC = 80                  # synthetic not-skin uploads (noise, screenshots, drawings)
BATCH = 64
CHECK_FILE = "dermoscopy_check.safetensors"
SCORES_FILE = "held_out_scores.csv"   # beside the feature cache: every held-out P(dermoscopy), for the contact sheet
DERMOSCOPY_SOURCES = ("vidir_molemax", "vidir_modern", "rosendahl", "vienna_dias", "isic2017")
# Held out and reported, but not binding the threshold: the shipped check holds acral dermoscopy of five contributors,
# so a new acral clinic is one contributor held out, not all acral at once.
REPORTED_ONLY = ("acral_all",)
# Pigmented lesions: the clinical photos most like dermoscopy of a worrying mole.
PIGMENTED = re.compile(r"melanom|naev|nevus|nevi|lentig|seborrh|pigment|mole|freckle|dermatofibroma|blue", re.I)
PAD_PIGMENTED = ("NEV", "MEL", "SEK")
COLUMNS = ["key", "path", "view", "kind", "collection", "role", "group", "pigmented", "watermarked"]


# ---------------------------------------------------------------- samples
def _rows(image_ids, paths, views, **columns) -> pd.DataFrame:
    rows = pd.DataFrame({"image_id": list(image_ids), "path": list(paths), **columns})
    out = pd.concat([rows.assign(view=v) for v in views], ignore_index=True)
    out["key"] = out["collection"] + "/" + out["image_id"] + "/" + out["view"]
    return out


def _roles_by_group(groups: pd.Series, labels: pd.Series, seed: int) -> np.ndarray:
    """train / val / test by group, stratified by label, about 70/15/15 (the project's split algorithm)."""
    from core.data.splits import stratified_group_folds

    folds = stratified_group_folds(labels.fillna("?").to_numpy(), groups.to_numpy(), 20, seed)
    return np.where(folds < 3, "test", np.where(folds < 6, "val", "train"))


def _folds_by_group(groups: pd.Series, seed: int) -> np.ndarray:
    """fold<k> of each row by group, HELD_OUT_SHARE of the groups 'test' (never seen by the shipped check)."""
    unique = np.random.default_rng(seed).permutation(groups.unique())
    n_held_out = round(HELD_OUT_SHARE * len(unique))
    role_of = {g: "test" if i < n_held_out else f"fold{i % FOLDS}" for i, g in enumerate(unique)}
    return groups.map(role_of).to_numpy()


def _with_artefacts(table: pd.DataFrame, share: float, seed: int) -> list[str]:
    picked = np.random.default_rng(seed).random(len(table)) < share
    return np.where(picked, ARTEFACTS_VIEW, "").tolist()


def dermoscopy_samples(data_dir: Path, split: Split, seed: int) -> pd.DataFrame:
    """HAM10000 + ISIC 2017 (the model's split) and acral dermoscopy (grouped split), whole and with artefacts."""
    from core.data.acquisition import acquisition_sources
    from core.data.datasets import load_manifest

    manifest = split.apply(load_manifest(data_dir, sources=("ham10000", "isic2017")))
    manifest = manifest[manifest["split"] != ""].reset_index(drop=True)
    common = dict(kind="dermoscopy", collection=acquisition_sources(manifest, data_dir).to_numpy(),
                  role=manifest["split"].to_numpy(), group=manifest["lesion_id"].fillna(manifest["image_id"]).to_numpy(),
                  pigmented=False, watermarked=False)
    ham_isic = _rows(manifest["image_id"], manifest["image_path"], ["whole"], **common)
    extra = _with_artefacts(manifest, ARTEFACT_SHARE, seed)
    ham_isic = pd.concat([ham_isic, ham_isic.assign(view=extra)[np.array(extra) != ""]], ignore_index=True)

    acral = pd.read_csv(data_dir / "acral" / "labels.csv", dtype=str, keep_default_na=False)
    acral_rows = _rows(acral["image_id"], [str(data_dir / "acral" / "images" / f"{i}.jpg") for i in acral["image_id"]],
                       ["whole", ARTEFACTS_VIEW], kind="dermoscopy",
                       collection=acral["source"].map(ACRAL_CONTRIBUTORS).fillna(ACRAL_OTHER).to_numpy(),
                       role=_roles_by_group(acral["group_id"], acral["dx"].replace("", None), seed),
                       group=acral["group_id"].to_numpy(), pigmented=False, watermarked=False)
    out = pd.concat([ham_isic, acral_rows], ignore_index=True)
    out["key"] = out["collection"] + "/" + out["image_id"] + "/" + out["view"]
    return out


def clinical_samples(data_dir: Path, seed: int) -> pd.DataFrame:
    """DermNet (grouped by diagnosis page) and PAD-UFES-20 (grouped by patient), whole and in random crops."""
    crops = [f"random{k}" for k in range(CLINICAL_CROPS)] + [f"zoom{k}" for k in range(CLINICAL_ZOOMS)]
    dermnet = pd.read_csv(data_dir / "clinical" / "labels.csv")
    dermnet_rows = _rows(dermnet["image_id"], [str(data_dir / "clinical" / "images" / f"{i}.jpg") for i in dermnet["image_id"]],
                         ["whole", "top", "right", *crops], kind="clinical_photo", collection="dermnet",
                         role=_folds_by_group(dermnet["category"], seed), group=dermnet["category"].to_numpy(),
                         pigmented=dermnet["category"].str.contains(PIGMENTED).to_numpy(), watermarked=True)
    pad = pd.read_csv(data_dir / "pad_ufes20" / "labels.csv", dtype={"group_id": str})
    pad_rows = _rows(pad["image_id"], [str(data_dir / "pad_ufes20" / "images" / f"{i}.jpg") for i in pad["image_id"]],
                     ["whole", *crops], kind="clinical_photo", collection="pad_ufes20",
                     role=_folds_by_group(pad["group_id"], seed), group=pad["group_id"].to_numpy(),
                     pigmented=pad["diagnostic"].isin(PAD_PIGMENTED).to_numpy(), watermarked=False)
    return pd.concat([dermnet_rows, pad_rows], ignore_index=True)


def not_skin_samples(photo_names: list[str], synthetic_names: list[str]) -> pd.DataFrame:
    photos = _rows(photo_names, photo_names, ["whole", *[f"random{k}" for k in range(PHOTO_CROPS)]], kind="not_skin",
                   collection="photos", role=[("test" if n in HELD_OUT_PHOTOS else f"fold{i % FOLDS}")
                                              for i, n in enumerate(photo_names)],
                   group=photo_names, pigmented=False, watermarked=False)
    synthetic = _rows(synthetic_names, synthetic_names, ["whole"], kind="not_skin", collection="synthetic",
                      role=[f"fold{i % FOLDS}" for i in range(len(synthetic_names))], group=synthetic_names,
                      pigmented=False, watermarked=False)
    return pd.concat([photos, synthetic], ignore_index=True)


def all_samples(data_dir: Path, split: Split, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Every sample (one row per view) and the in-memory images (not-skin photos and synthetic uploads) by name."""
    from calibration.ood_probes import real_photographs, synthetic_screens_and_drawings

    photo_names, photos = real_photographs()
    synthetic_names, synthetic = synthetic_screens_and_drawings(SYNTHETIC, seed)
    samples = pd.concat([dermoscopy_samples(data_dir, split, seed), clinical_samples(data_dir, seed),
                         not_skin_samples(photo_names, synthetic_names)], ignore_index=True)
    return samples, dict(zip(photo_names + synthetic_names, photos + synthetic))


# ---------------------------------------------------------------- features
def features(samples: pd.DataFrame, in_memory: dict[str, np.ndarray], card: dict, cache: Path) -> np.ndarray:
    """ImageNet features of every sample's view, made into the classifier input as the Analyzer makes it (the card's
    preprocessing and input size; cached per sample key in `cache`). No Analyzer: it needs the check being fitted."""
    from core.decisions.ood import imagenet_backbone
    from core.imaging.preprocess import Preprocessing, network_box, network_image
    from core.imaging.tensors import normalize_batch
    from core.io.intake import load_image

    done: dict[str, np.ndarray] = {}
    if cache.exists():
        with np.load(cache) as stored:
            done = dict(zip(stored["keys"], stored["features"]))
    todo = samples[~samples["key"].isin(done)].sort_values("path", kind="stable")
    if len(todo):
        preprocessing = Preprocessing.from_card(card["preprocessing"], "classifier")
        size = (card["input_size"]["classifier"]["height"], card["input_size"]["classifier"]["width"])
        backbone = imagenet_backbone()
        started, image, image_path, batch = time.time(), None, None, []

        def save() -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, keys=np.array(list(done)), features=np.stack(list(done.values())))

        for i, row in enumerate(todo.itertuples(index=False)):
            if row.path != image_path:
                image_path = row.path
                image = in_memory[row.path] if row.path in in_memory else load_image(Path(row.path).read_bytes())
            view = np.ascontiguousarray(crop_view(image, row.view, row.key, row.watermarked))
            batch.append((row.key, network_image(view, size, preprocessing, network_box(view, preprocessing))))
            if len(batch) == BATCH or i == len(todo) - 1:
                with torch.inference_mode():
                    x = normalize_batch(torch.from_numpy(np.stack([b[1] for b in batch])))
                    out = backbone(x).float().numpy()
                done.update({key: f.astype(np.float16) for (key, _), f in zip(batch, out)})
                batch = []
                if (i + 1) % (BATCH * 40) < BATCH or i == len(todo) - 1:
                    print(f"features {i + 1}/{len(todo)} ({(i + 1) / (time.time() - started):.0f} img/s)", flush=True)
                    save()
    return np.stack([done[k] for k in samples["key"]]).astype(np.float32)


# ---------------------------------------------------------------- fitting
def fit(x: np.ndarray, kinds: np.ndarray, c: float, seed: int) -> DermoscopyCheck:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000, random_state=seed)
    model.fit((x - mean) / scale, np.array([KINDS.index(k) for k in kinds]))
    return DermoscopyCheck(mean, scale, model.coef_, model.intercept_, threshold=0.0)


def lowest_source_quantile(p: np.ndarray, sources: np.ndarray, share: float) -> float:
    """The threshold that refuses at most `share` of every source: the lowest per-source `share` quantile."""
    return min(float(np.quantile(p[sources == s], share)) for s in np.unique(sources))


def rate(flags: np.ndarray, groups: np.ndarray) -> dict:
    """A share with its Wilson 95 % interval and a bootstrap interval over groups (lesions, patients, pages)."""
    flags = np.asarray(flags, dtype=float)
    low, high = bootstrap_interval(lambda idx: float(flags[idx].mean()), len(flags), groups)
    w_low, w_high = wilson_interval(int(flags.sum()), len(flags))
    return {"n": int(len(flags)), "share": float(flags.mean()), "wilson95": [w_low, w_high],
            "bootstrap95": [low, high]}


class HeldOut:
    """P(dermoscopy) and P(clinical) / P(not skin) of every sample from checks that never saw it, by protocol."""

    def __init__(self, x: np.ndarray, samples: pd.DataFrame, c: float, seed: int):
        self.x, self.s, self.c, self.seed = x, samples, c, seed
        kind, view, role = samples["kind"].to_numpy(), samples["view"].to_numpy(), samples["role"].to_numpy()
        # training views: dermoscopy whole and with artefacts; DermNet never whole (its watermark); the rest all
        self.trainable = ~(samples["watermarked"].to_numpy() & (view == "whole")) & (role != "test")
        self.is_derm = kind == "dermoscopy"

    def _scores(self, train: np.ndarray, score: np.ndarray) -> np.ndarray:
        check = fit(self.x[train], self.s["kind"].to_numpy()[train], self.c, self.seed)
        return check.probabilities(self.x[score])

    def by_source(self, sources: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """{held-out name: probabilities of its dermoscopy images}, each from a check fitted without those sources."""
        collection = self.s["collection"].to_numpy()
        out = {}
        for name, held in sources.items():
            out[name] = self._scores(self.trainable & ~np.isin(collection, held), self.is_derm & np.isin(collection, held))
            print(f"  C={self.c}: held out {name}", flush=True)
        return out

    def by_collection(self) -> dict[str, np.ndarray]:
        """{collection: probabilities of its clinical photos}, from a check fitted without that collection."""
        collection = self.s["collection"].to_numpy()
        return {name: self._scores(self.trainable & (collection != name), collection == name)
                for name in ("dermnet", "pad_ufes20")}

    def cross_fitted(self) -> np.ndarray:
        """Probabilities of every clinical / not-skin sample from a check fitted without its fold (grouped by
        diagnosis page, patient or picture; the same fold number of every collection held out at once)."""
        role = self.s["role"].to_numpy()
        out = np.full((len(role), len(KINDS)), np.nan)
        for k in range(FOLDS):
            held = role == f"fold{k}"
            out[held] = self._scores(self.trainable & ~held, held)
        return out


def held_out_sources() -> dict[str, tuple[str, ...]]:
    acral = (*ACRAL_CONTRIBUTORS.values(), ACRAL_OTHER)
    return {**{s: (s,) for s in DERMOSCOPY_SOURCES + acral}, "acral_all": acral}


def cost_ms(check: DermoscopyCheck, one: np.ndarray, repeats: int = 2000) -> dict:
    """What the check adds to an analysis (its features are the OOD check's, computed anyway): the median and 95th
    percentile milliseconds of scoring one image."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        check.kinds(check.probabilities(one))
        times.append(1000 * (time.perf_counter() - started))
    return {"median": float(np.median(times)), "p95": float(np.quantile(times, 0.95))}


def held_out_scores(samples: pd.DataFrame, by_source: dict, by_collection: dict, oof: np.ndarray,
                    sources: dict) -> pd.DataFrame:
    """One row per measured image and protocol with its held-out P(dermoscopy) (read by
    calibration.check_contact_sheet)."""
    parts = []
    derm = samples[samples["kind"] == "dermoscopy"]
    for name, probs in by_source.items():
        rows = derm[derm["collection"].isin(sources[name])]
        parts.append(rows.assign(protocol=f"held_out_source:{name}", p_dermoscopy=probs[:, 0]))
    for name, probs in by_collection.items():
        parts.append(samples[samples["collection"] == name].assign(protocol="held_out_collection", p_dermoscopy=probs[:, 0]))
    scored = ~np.isnan(oof[:, 0])
    parts.append(samples[scored].assign(protocol="cross_fitted", p_dermoscopy=oof[scored, 0]))
    out = pd.concat(parts, ignore_index=True)
    return out[out["view"].isin(("whole", "top"))].drop(columns=["key"])


@dataclass(frozen=True)
class SampleColumns:
    """The samples' columns every figure selects its rows by, as arrays."""
    kind: np.ndarray
    view: np.ndarray
    role: np.ndarray
    collection: np.ndarray
    group: np.ndarray
    pigmented: np.ndarray
    whole: np.ndarray           # the image as it arrives
    measured_view: np.ndarray   # the view a figure measures: DermNet without its watermark (top), the rest whole

    @classmethod
    def of(cls, samples: pd.DataFrame) -> "SampleColumns":
        view = samples["view"].to_numpy()
        whole = view == "whole"
        return cls(samples["kind"].to_numpy(), view, samples["role"].to_numpy(), samples["collection"].to_numpy(),
                   samples["group"].to_numpy(), samples["pigmented"].to_numpy(), whole,
                   np.where(samples["watermarked"], view == "top", whole))


@dataclass(frozen=True)
class Fitted:
    """The held-out scores at the chosen C and the thresholds on P(dermoscopy) they give."""
    c: float
    held: HeldOut
    by_source: dict[str, np.ndarray]
    oof: np.ndarray             # grouped cross-fitted probabilities of the clinical and not-skin samples
    threshold: float            # refused below
    flag_below: float           # greyed with "this may be a camera photo" from threshold up to here


def source_threshold(cols: SampleColumns, sources: dict, by_source: dict[str, np.ndarray], share: float) -> float:
    """Lowest per-source `share` quantile of held-out P(dermoscopy), over the train / val roles of each source."""
    derm = cols.kind == "dermoscopy"
    p, names = [], []
    for name, probs in by_source.items():
        if name in REPORTED_ONLY:
            continue
        in_source = np.isin(cols.collection[derm], sources[name])
        keep = (cols.role[derm][in_source] != "test") & cols.whole[derm][in_source]
        p.append(probs[keep, 0])
        names += [name] * int(keep.sum())
    return lowest_source_quantile(np.concatenate(p), np.array(names), share)


def choose_c(x: np.ndarray, samples: pd.DataFrame, cols: SampleColumns, sources: dict, c_grid: tuple[float, ...],
             seed: int) -> tuple[Fitted, dict]:
    """For each C, the held-out-source threshold and the share of clinical photos it refuses (grouped
    cross-fitting); the C refusing the most in its worst collection, and every C's figures."""
    selection, runs = {}, {}
    clinical = (cols.kind == "clinical_photo") & cols.measured_view & (cols.role != "test")
    for c in c_grid:
        held = HeldOut(x, samples, c, seed)
        by_source = held.by_source(sources)
        threshold = source_threshold(cols, sources, by_source, REFUSE_SHARE)
        oof = held.cross_fitted()
        refused = {name: float((oof[clinical & (cols.collection == name), 0] < threshold).mean())
                   for name in ("dermnet", "pad_ufes20")}
        selection[str(c)] = {"threshold": threshold, "clinical_refused_cross_fitted": refused}
        runs[c] = (held, by_source, threshold, oof)
        print(f"C={c}: threshold {threshold:.4f}, clinical refused (cross-fitted) {refused}", flush=True)
    best_c = max(c_grid, key=lambda c: min(selection[str(c)]["clinical_refused_cross_fitted"].values()))
    held, by_source, threshold, oof = runs[best_c]
    flag_below = source_threshold(cols, sources, by_source, FLAG_SHARE)
    return Fitted(best_c, held, by_source, oof, threshold, flag_below), selection


def refusal_rates(fitted: Fitted, probs: np.ndarray, groups: np.ndarray, dermoscopy: bool) -> dict:
    """Refused and flagged shares of a set of held-out probabilities (for non-dermoscopy also either, and refused
    as a clinical photo), with their intervals."""
    refused = probs[:, 0] < fitted.threshold
    flagged = (probs[:, 0] >= fitted.threshold) & (probs[:, 0] < fitted.flag_below)
    out = {"refused": rate(refused, groups), "flagged_maybe_camera_photo": rate(flagged, groups)}
    if not dermoscopy:
        out["refused_or_flagged"] = rate(refused | flagged, groups)
        out["refused_as_clinical_photo"] = rate(kinds_at(probs, fitted.threshold) == "clinical_photo", groups)
    return out


def held_out_results(cols: SampleColumns, sources: dict, fitted: Fitted, by_collection: dict) -> dict:
    """The section's `results`: every held-out protocol's refusal rates."""
    kind, role, collection, group, whole = cols.kind, cols.role, cols.collection, cols.group, cols.whole
    results: dict[str, dict] = {"dermoscopy_by_held_out_source": {}, "clinical_by_held_out_collection": {},
                                "clinical_by_held_out_patient_or_page": {}, "not_skin_cross_fitted": {}}
    for name, probs in fitted.by_source.items():
        rows = np.flatnonzero((kind == "dermoscopy") & np.isin(collection, sources[name]))
        for part, keep in (("test_role", (role[rows] == "test") & whole[rows]), ("all", whole[rows])):
            results["dermoscopy_by_held_out_source"][f"{name}_{part}"] = refusal_rates(
                fitted, probs[keep], group[rows][keep], True)
    for name, probs in by_collection.items():
        rows = np.flatnonzero(collection == name)
        views = ({"whole": whole[rows]} if name == "pad_ufes20" else
                 {"watermarked_whole": whole[rows], "watermark_cropped": cols.view[rows] == "top"})
        for label, keep in views.items():
            by_collection_results = results["clinical_by_held_out_collection"]
            by_collection_results[f"{name}_{label}"] = refusal_rates(fitted, probs[keep], group[rows][keep], False)
            pig = keep & cols.pigmented[rows]
            by_collection_results[f"{name}_{label}_pigmented"] = refusal_rates(fitted, probs[pig], group[rows][pig],
                                                                               False)
    oof = fitted.oof
    for name in ("dermnet", "pad_ufes20"):
        measured = (collection == name) & (role != "test") & cols.measured_view
        for label, keep in (("", measured), ("_pigmented", measured & cols.pigmented)):
            results["clinical_by_held_out_patient_or_page"][f"{name}{label}"] = refusal_rates(
                fitted, oof[keep], group[keep], False)
    for name in ("photos", "synthetic"):
        keep = (collection == name) & (role != "test") & whole
        results["not_skin_cross_fitted"][name] = refusal_rates(fitted, oof[keep], group[keep], False)
        results["not_skin_cross_fitted"][name]["as_not_skin"] = rate(
            kinds_at(oof[keep], fitted.threshold) == "not_skin", group[keep])
    return results


def check_section(samples: pd.DataFrame, cols: SampleColumns, fitted: Fitted, selection: dict, results: dict,
                  check: DermoscopyCheck, cost: dict, seconds: float) -> dict:
    """The model card's `dermoscopy_check` section."""
    shipped_train, kind, collection = fitted.held.trainable, cols.kind, cols.collection
    held_out = (cols.role == "test") & cols.whole
    return {
        "threshold": fitted.threshold, "flag_below": fitted.flag_below, "kinds": list(KINDS), "c": float(fitted.c),
        "selection": selection, "results": results,
        "n_training_images": {k: int((shipped_train & (kind == k)).sum()) for k in KINDS},
        "held_out_clinical_images": sorted(samples["image_id"][(collection == "dermnet") & held_out]),
        "held_out_pad_images": sorted(samples["image_id"][(collection == "pad_ufes20") & held_out]),
        "held_out_photos": list(HELD_OUT_PHOTOS),
        "cost_ms": cost,
        "method": (f"multinomial logistic regression (C={fitted.c}, balanced classes) on standardised ImageNet "
                   "EfficientNet-Lite0 features of the classifier input. Refused when P(dermoscopy) is below the "
                   f"lowest per-source {REFUSE_SHARE:.0%} quantile of dermoscopy scored by checks fitted without "
                   "that source (train/val roles of each HAM10000 source, ISIC 2017, each acral contributor; all "
                   "acral held out at once is reported, not binding); greyed with 'this may be a camera photo' below "
                   f"flag_below, the lowest per-source {FLAG_SHARE:.0%} quantile of the same scores. Clinical: DermNet "
                   "(watermark corner never trained on) and PAD-UFES-20; "
                   "figures held out by source, by collection and by patient / diagnosis page "
                   f"({FOLDS}-fold grouped cross-fitting), with Wilson and grouped-bootstrap 95 % intervals"),
        "seconds": round(seconds, 1)}


def fit_dermoscopy_check(data_dir: Path, card: dict, split: Split, cache: Path, seed: int = SEED,
                         c_grid: tuple[float, ...] = C_GRID, max_images: int = 0) -> tuple[DermoscopyCheck, dict]:
    """Fit, measure held out and return (the shipped check, the model card's `dermoscopy_check` section). card: the
    card being built (its classifier input); split: the model's; max_images > 0: at most that many samples per kind,
    role, collection and view (tests)."""
    started = time.time()
    samples, in_memory = all_samples(data_dir, split, seed)
    if max_images:
        samples = samples.groupby(["kind", "role", "collection", "view"], sort=False).head(max_images)
        samples = samples.reset_index(drop=True)  # every view: DermNet trains only on its views without the watermark
    x = features(samples, in_memory, card, cache)
    cols, sources = SampleColumns.of(samples), held_out_sources()
    fitted, selection = choose_c(x, samples, cols, sources, c_grid, seed)
    by_collection = fitted.held.by_collection()
    results = held_out_results(cols, sources, fitted, by_collection)

    held_out_scores(samples, fitted.by_source, by_collection, fitted.oof, sources).to_csv(cache.parent / SCORES_FILE,
                                                                                          index=False)
    shipped_train = fitted.held.trainable
    check = fit(x[shipped_train], cols.kind[shipped_train], fitted.c, seed)
    check = DermoscopyCheck(check.feature_mean, check.feature_scale, check.weight, check.bias, fitted.threshold,
                            fitted.flag_below)
    return check, check_section(samples, cols, fitted, selection, results, check, cost_ms(check, x[:1]),
                                time.time() - started)


def dermoscopy_check(data_dir: Path, weights: Path, card: dict, split: Split, cache: Path, seed: int = SEED,
                     max_images: int = 0) -> dict:
    """Fit the check, save WEIGHTS/dermoscopy_check.safetensors and return the card sections
    {"dermoscopy_check": ..., "files": {the check's file}} (calibration.calibrate merges them with the other steps')."""
    check, section = fit_dermoscopy_check(data_dir, card, split, cache, seed, max_images=max_images)
    file_entry = save_weights(check.tensors(), Path(weights) / CHECK_FILE, half=False,
                              metadata={"what": "dermoscopy check: logistic regression on ImageNet EfficientNet-Lite0 "
                                                "features over " + ", ".join(KINDS)})
    print(json.dumps({k: section[k] for k in ("threshold", "flag_below", "c", "results")}, indent=1))
    return {"dermoscopy_check": section, "files": {CHECK_FILE: file_entry}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--cache", type=Path, default=Path(".cache/dermoscopy_check/features.npz"))
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--split-file", default="", help="default: the split of the card in WEIGHTS")
    args = parser.parse_args(argv)
    card = read_card_json(args.weights)
    sections = dermoscopy_check(args.data_dir, args.weights, card, Split.of_args(args.split_file, args.weights),
                                args.cache, args.seed)
    write_sections(args.weights, sections)
    return sections


if __name__ == "__main__":
    main()
