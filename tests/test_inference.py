"""The Analyzer on the shipped weights and real full-resolution HAM10000 images."""
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from core.classes import CLASS_CODES
from core.inference import Analyzer
from core.weights_io import WeightsIntegrityError


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
    assert 0 <= r.uncertainty <= 1
    assert r.measurements["area_px"] == int((r.mask > 0).sum()) or r.measurements["area_px"] > 0
    assert {"preprocess", "coarse_sn", "mask_cn", "enhanced_sn", "cam", "total"} <= set(r.timings)


def test_shipped_weights_segment_and_classify_real_lesions(analyzer, fullres):
    """The shipped model is the trained one: good masks and mostly right labels on the full-resolution originals."""
    dices, correct = [], []
    for image_path, mask_path, dx in fullres[::6]:
        r = analyzer.analyze(_rgb(image_path))
        truth = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127
        pred = r.mask > 0
        dices.append(2 * (pred & truth).sum() / max(pred.sum() + truth.sum(), 1))
        correct.append(r.label == dx)
    assert np.mean(dices) > 0.8, np.mean(dices)
    assert np.mean(correct) > 0.5, np.mean(correct)


def test_non_dermoscopic_images_are_flagged(analyzer):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    flat = np.full((300, 400, 3), (40, 200, 40), np.uint8)
    for image in (noise, flat):
        r = analyzer.analyze(image)
        assert r.ood and "colour and texture" in r.ood_reason, r.ood_reason


def test_real_dermoscopic_images_are_mostly_in_distribution(analyzer, fullres):
    flagged = [analyzer.analyze(_rgb(path)).ood for path, _, _ in fullres[3::12]]
    assert np.mean(flagged) <= 0.2, flagged


def test_cam_for_any_class(analyzer, fullres):
    rgb = _rgb(fullres[0][0])
    cams = {c: analyzer.cam_for(rgb, c, "Grad-CAM") for c in ("mel", "nv")}
    assert all(c.shape == rgb.shape[:2] for c in cams.values())
    assert not np.allclose(cams["mel"], cams["nv"])


def test_offered_cam_methods_differ_on_mask_cn(analyzer, fullres):
    """The CAM methods the Analyze page offers for mask-CN (core.cam.distinct_class_cams) give clearly different,
    class-specific maps on a real image; each method left out repeats an offered one or ignores the target class.
    Score-CAM (one forward pass per channel, ~10 s on CPU) is perturbation-based and is not recomputed here."""
    from core.cam import CAM_METHODS, distinct_class_cams

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
        repeats = min(gap(maps[left_out], maps[m]) for m in gradient_based) < 0.05
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
