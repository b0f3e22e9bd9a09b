"""The Analyzer on the shipped weights and real full-resolution HAM10000 images."""
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from core.data.classes import CLASS_CODES
from core.analysis.inference import Analyzer
from core.io.weights_io import WeightsIntegrityError


@pytest.fixture(scope="module")
def analyzer(repo_root):
    return Analyzer.load(repo_root / "weights")


@pytest.fixture(scope="module")
def fullres(data_dir):
    folder = data_dir / "ham10000" / "fullres"
    meta = pd.read_csv(data_dir / "ham10000" / "HAM10000_metadata.csv").set_index("image_id")
    paths = sorted((folder / "images").glob("*.jpg"))
    return [(p, folder / "masks" / f"{p.stem}_segmentation.png", meta.loc[p.stem, "dx"]) for p in paths]


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_result_contract_on_a_real_image(analyzer, fullres):
    image_path, _, _ = fullres[0]
    rgb = _rgb(image_path)
    r = analyzer.analyze(rgb, cam=True)
    assert r.mask.shape == rgb.shape[:2] and r.mask.dtype == np.uint8 and set(np.unique(r.mask)) <= {0, 255}
    assert r.coarse_mask.shape == rgb.shape[:2]
    assert list(r.probs) == list(CLASS_CODES) and abs(sum(r.probs.values()) - 1) < 1e-5
    assert r.label == max(r.probs, key=r.probs.get)
    assert r.cam.shape == rgb.shape[:2] and 0 <= r.cam.min() and r.cam.max() <= 1
    assert r.uncertainty_level in ("low", "moderate", "high") and r.uncertainty_text.startswith("Uncertainty ")
    # the measured area is the largest 8-connected component of the mask with its holes filled (core.lesion.lesion_measurements)
    labels, n = ndimage.label(r.mask > 0, structure=np.ones((3, 3)))
    assert n >= 1
    largest = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    assert r.measurements["area_px"] == int(ndimage.binary_fill_holes(largest).sum())
    assert {"preprocess", "networks", "rules", "measurements", "cam", "total"} <= set(r.timings)


def test_shipped_weights_segment_real_lesions(analyzer, fullres, ham_split):
    """The full-resolution upload path segments well: Dice > 0.8 on the originals of test-split images."""
    test_ids = set(ham_split.loc[ham_split["split"] == "test", "image_id"])
    held_out = [(image, mask) for image, mask, _ in fullres if image.stem in test_ids]
    assert len(held_out) >= 10, len(held_out)
    dices = []
    for image_path, mask_path in held_out:
        pred = analyzer.analyze(_rgb(image_path)).mask > 0
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
        dices.append(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))
    assert np.mean(dices) > 0.8, np.mean(dices)


# Quality gate: 9 HAM10000 test-split images per class (assign_splits(HAM10000 manifest, seed 42), split "test", the
# first 9 image_ids of each class in sorted order); images no network was trained or calibrated on.
GATE_IDS = {
    "akiec": ["ISIC_0024463", "ISIC_0024539", "ISIC_0024925", "ISIC_0025130", "ISIC_0025178", "ISIC_0025247",
              "ISIC_0025358", "ISIC_0025780", "ISIC_0025808"],
    "bcc": ["ISIC_0024331", "ISIC_0024457", "ISIC_0024504", "ISIC_0024634", "ISIC_0024666", "ISIC_0024829",
            "ISIC_0024885", "ISIC_0024984", "ISIC_0025019"],
    "bkl": ["ISIC_0024312", "ISIC_0024358", "ISIC_0024382", "ISIC_0024409", "ISIC_0024453", "ISIC_0024623",
            "ISIC_0024626", "ISIC_0024676", "ISIC_0024696"],
    "df": ["ISIC_0025223", "ISIC_0026313", "ISIC_0027008", "ISIC_0027107", "ISIC_0027216", "ISIC_0027648",
           "ISIC_0027727", "ISIC_0028346", "ISIC_0028790"],
    "mel": ["ISIC_0024310", "ISIC_0024449", "ISIC_0024496", "ISIC_0024554", "ISIC_0024701", "ISIC_0024729",
            "ISIC_0024792", "ISIC_0024806", "ISIC_0024823"],
    "nv": ["ISIC_0024311", "ISIC_0024317", "ISIC_0024319", "ISIC_0024320", "ISIC_0024327", "ISIC_0024328",
           "ISIC_0024341", "ISIC_0024343", "ISIC_0024344"],
    "vasc": ["ISIC_0024747", "ISIC_0025425", "ISIC_0025612", "ISIC_0025807", "ISIC_0026163", "ISIC_0027385",
             "ISIC_0027563", "ISIC_0027888", "ISIC_0028885"],
}
MAX_ACCURACY_DROP = 0.03
MAX_DICE_DROP = 0.03


def test_gate_images_are_the_first_test_split_images_of_each_class(ham_split):
    test = ham_split[ham_split["split"] == "test"].sort_values("image_id")
    for code, ids in GATE_IDS.items():
        assert ids == list(test.loc[test["dx"] == code, "image_id"][: len(ids)]), code


def test_live_quality_matches_the_model_cards_predictions(analyzer, ham_split, repo_root):
    """The Analyzer as the app runs it, on the gate images, is at most 3 points less accurate (and its enhanced-SN
    Dice at most 0.03 lower) than the shipped model's own test predictions on the same images
    (weights/test_predictions.csv, written by the evaluation): the app's preprocessing and decision rule are those the
    model was evaluated with. The expected figures come from the CSV, so new weights need no edit here."""
    from core.io.intake import load_image_file

    card = pd.read_csv(repo_root / "weights" / "test_predictions.csv").set_index("image_id")
    rows = ham_split.set_index("image_id")
    truth = {image_id: code for code, ids in GATE_IDS.items() for image_id in ids}
    assert set(truth) <= set(card.index), "gate images missing from weights/test_predictions.csv"
    correct, dices = [], []
    for image_id, code in truth.items():
        r = analyzer.analyze(load_image_file(rows.loc[image_id, "image_path"]))
        reference = cv2.imread(rows.loc[image_id, "mask_path"], cv2.IMREAD_GRAYSCALE) > 127
        correct.append(r.label == code)
        dices.append(2 * ((r.mask > 0) & reference).sum() / max((r.mask > 0).sum() + reference.sum(), 1))
    expected = np.mean([card.loc[i, "pred"] == code for i, code in truth.items()])
    assert np.mean(correct) >= expected - MAX_ACCURACY_DROP, (np.mean(correct), expected)
    expected_dice = card.loc[list(truth), "dice_enhanced"].mean()
    assert np.mean(dices) >= expected_dice - MAX_DICE_DROP, (np.mean(dices), expected_dice)


def test_non_dermoscopic_images_are_flagged(analyzer):
    """A colourless image and a real photograph of a cup get no diagnosis, each with its reason; a portrait (skin, a
    face: a camera photo of a person) gets none either."""
    import skimage.data

    rng = np.random.default_rng(1)
    grey = np.repeat(rng.integers(0, 256, (300, 400, 1), dtype=np.uint8), 3, axis=2)
    for image, why in ((grey, "no colour"), (skimage.data.coffee(), "This does not look like an image of skin")):
        r = analyzer.analyze(image)
        assert r.ood_level == "not_skin" and why in r.ood_reason, r.ood_reason
        assert r.diagnosis_shown is False
    assert analyzer.analyze(skimage.data.astronaut()).diagnosis_shown is False


def test_uploads_that_are_not_photographs_are_not_skin_never_camera_photos(analyzer):
    """Colour noise, screenshots and a drawn brown ellipse on a plain (skin-like or other) background, made with a seed
    the dermoscopy check was not fitted on: refused with the not-skin sentence, not the camera-photo one."""
    from calibration.ood_probes import synthetic_screens_and_drawings

    names, images = synthetic_screens_and_drawings(12, seed=2024)
    for name, image in zip(names, images):
        r = analyzer.analyze(image)
        assert r.ood_level == "not_skin" and r.ood_reason.startswith("This does not look like an image of skin"), name
        assert r.triage.level == "not_assessed"


def test_smartphone_photos_of_unseen_patients_are_mostly_refused_or_greyed(analyzer, data_dir, repo_root):
    """PAD-UFES-20 photos of the patients the shipped check never saw (the card's held_out_pad_images): most are
    refused as camera photos or greyed as "may be a camera photo" (measured 64 %: the check's known shortfall on
    close-ups of pigmented lesions, docs/dermoscopy_check.md), and a refused one is refused as a camera photo."""
    import json

    from core.decisions.ood import CLINICAL_PHOTO_TEXT
    from core.io.intake import load_image_file

    card = json.loads((repo_root / "weights" / "model_card.json").read_text())
    ids = card["dermoscopy_check"]["held_out_pad_images"]
    results = [analyzer.analyze(load_image_file(data_dir / "pad_ufes20" / "images" / f"{i}.jpg")) for i in ids]
    levels = pd.Series([r.ood_level for r in results])
    assert len(ids) >= 50 and levels.isin(("clinical_photo", "maybe_clinical_photo")).mean() >= 0.55, levels.value_counts()
    assert all(r.ood_reason == CLINICAL_PHOTO_TEXT for r in results if r.ood_level == "clinical_photo")
    assert (levels == "clinical_photo").any() and (levels != "not_skin").all()


def test_a_clinical_photo_is_refused_as_one(analyzer, clinical_photo):
    """A held-out DermNet photograph, whole (with its watermark) and with the watermark corner cropped away."""
    from core.io.intake import load_image
    from core.decisions.ood import CLINICAL_PHOTO_TEXT

    rgb = load_image(clinical_photo.read_bytes())
    for image in (rgb, rgb[: int(rgb.shape[0] * 0.72)]):
        r = analyzer.analyze(np.ascontiguousarray(image))
        assert r.ood_level == "clinical_photo" and r.ood_reason == CLINICAL_PHOTO_TEXT and not r.diagnosis_shown


def test_real_dermoscopic_images_are_mostly_in_distribution(analyzer, fullres):
    flagged = [not analyzer.analyze(_rgb(path)).diagnosis_shown for path, _, _ in fullres[3::12]]
    assert np.mean(flagged) <= 0.2, flagged


def test_cam_for_any_class(analyzer, fullres):
    rgb = _rgb(fullres[0][0])
    cams = {c: analyzer.cam_for(rgb, c, "Grad-CAM") for c in ("mel", "nv")}
    assert all(c.shape == rgb.shape[:2] for c in cams.values())
    assert not np.allclose(cams["mel"], cams["nv"])


def test_offered_cam_methods_differ_on_mask_cn(analyzer, fullres):
    """The CAM methods the Analyze page offers for mask-CN (core.analysis.cam.distinct_class_cams) give clearly different,
    class-specific maps on a real image; each method left out repeats an offered one or ignores the target class.
    Score-CAM (one forward pass per channel, ~10 s on CPU) is perturbation-based and is not recomputed here."""
    from core.analysis.cam import distinct_class_cams
    from core.analysis.gradient_cam import CAM_METHODS

    rgb = _rgb(fullres[0][0])
    offered = distinct_class_cams(linear_head=True)
    assert offered == ["Grad-CAM", "Grad-CAM++", "Score-CAM"]
    maps = {m: analyzer.cam_for(rgb, "mel", m) for m in CAM_METHODS if m != "Score-CAM"}
    gradient_based = [m for m in offered if m in maps]

    def gap(a, b) -> float:
        return float(np.abs(a - b).max())

    for i, a in enumerate(gradient_based):
        assert gap(maps[a], analyzer.cam_for(rgb, "nv", a)) > 0.1, a
        for b in gradient_based[i + 1:]:
            assert gap(maps[a], maps[b]) > 0.1, (a, b)
    for left_out in set(maps) - set(offered):
        repeats = min(gap(maps[left_out], maps[m]) for m in gradient_based) < 0.1  # offered ones differ by > 0.1
        class_agnostic = gap(maps[left_out], analyzer.cam_for(rgb, "nv", left_out)) < 1e-6
        assert repeats or class_agnostic, left_out


def test_bad_array_is_refused(analyzer):
    with pytest.raises(ValueError, match="uint8"):
        analyzer.analyze(np.zeros((100, 100), np.float32))


def test_tampered_weights_refuse_to_load(repo_root, tmp_path):
    copy = tmp_path / "weights"
    shutil.copytree(repo_root / "weights", copy)
    target = copy / "mask_cn.safetensors"
    data = bytearray(target.read_bytes())
    data[-100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        Analyzer.load(copy)


def test_each_network_is_built_on_the_backbone_the_card_names(repo_root, tmp_path, fullres):
    """A larger classifier on the same segmenters (EfficientNet-Lite1 mask-CN, Lite0 coarse-SN and enhanced-SN)
    loads and analyses: every network is built from its own backbone, not one shared name."""
    import json

    import torch

    from core.models import create_model
    from core.io.weights_io import save_weights

    copy = tmp_path / "weights"
    shutil.copytree(repo_root / "weights", copy, ignore=shutil.ignore_patterns("*.onnx"))
    torch.manual_seed(0)
    lite1 = create_model("mask_cn", "efficientnet_lite1", pretrained=None)
    entry = save_weights(lite1, copy / "mask_cn.safetensors", metadata={"arch": "mask_cn",
                                                                        "backbone": "efficientnet_lite1"})
    card = json.loads((copy / "model_card.json").read_text())
    card["files"]["mask_cn.safetensors"] = entry
    card["backbones"]["mask_cn"] = "efficientnet_lite1"
    (copy / "model_card.json").write_text(json.dumps(card))
    analyzer = Analyzer.load(copy, engine="torch")
    assert analyzer.mask_cn.net.pretrained_cfg["architecture"] == "efficientnet_lite1"
    result = analyzer.analyze(_rgb(fullres[0][0]))
    assert abs(sum(result.probs.values()) - 1) < 1e-5 and result.mask.any()


def test_similar_cases_share_the_diagnosis_far_above_chance(analyzer, ham_split):
    """Retrieval quality live, on real held-out images: over the gate (9 test-split images per class) the 8 similar
    cases the Analyzer returns carry the query's diagnosis far more often than chance. With the same number of
    queries per class, chance precision@8 is 1/7 whatever the reference set's class mix; the shipped model scores
    about 0.67 here."""
    from core.io.intake import load_image_file

    rows = ham_split.set_index("image_id")
    precision = [float((analyzer.analyze(load_image_file(rows.loc[image_id, "image_path"])).similar["dx"] == code).mean())
                 for code, ids in GATE_IDS.items() for image_id in ids]
    assert np.mean(precision) >= 1 / 7 + 0.3, np.mean(precision)
