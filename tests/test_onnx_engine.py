"""core.analysis.onnx_engine / onnx_export: the networks exported to ONNX and run by ONNX Runtime or OpenVINO give the
analyses the torch path gives on real validation images (bench.engines.TOLERANCE: top class and referral the same,
masks Dice >= 0.99, probabilities to float32 rounding), the export leaves the networks in eval mode, and the ONNX
files are sha256-checked like every weight file."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from bench.engines import TOLERANCE
from bench.precision import compare, validation_rows, violations
from core.analysis import onnx_engine
from core.analysis.inference import Analyzer
from core.analysis.onnx_export import ONNX_FILES, example_inputs, export_network, load_fp32_network
from core.decisions.model_card import load_card
from core.io.weights_io import WeightsIntegrityError


@pytest.fixture(scope="session")
def onnx_cache(request, tmp_path_factory):
    """The export cache for the whole session, kept between runs in pytest's cache folder (the networks are exported
    once per set of weights and export code, not per test run)."""
    cache = getattr(request.config, "cache", None)
    folder = cache.mkdir("lesionlens-onnx") if cache is not None else tmp_path_factory.mktemp("onnx")
    previous = os.environ.get(onnx_engine.CACHE_ENV)
    os.environ[onnx_engine.CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(onnx_engine.CACHE_ENV, None)
    else:
        os.environ[onnx_engine.CACHE_ENV] = previous


@pytest.fixture(scope="module")
def analyzers(repo_root, onnx_cache):
    """The shipped weights in fp32: torch (packed for oneDNN) and each engine."""
    return {engine: Analyzer.load(repo_root / "weights", device="cpu", precision="fp32", engine=engine)
            for engine in onnx_engine.ENGINES}


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_an_engine_gives_the_analyses_torch_gives_on_validation_images(analyzers, data_dir, engine):
    analyzer = analyzers[engine]
    assert analyzer.engine == engine and analyzers["torch"].engine == "torch"
    assert isinstance(analyzer.coarse_sn, onnx_engine.EngineNetwork)  # the engine really runs the networks
    assert isinstance(analyzer.mask_cn_forward, onnx_engine.EngineMaskCN)
    assert isinstance(analyzer.mask_cn, torch.nn.Module)  # the gradient CAMs' torch copy
    agreement = compare({"torch": analyzers["torch"], engine: analyzer}, validation_rows(8))
    assert violations(agreement, TOLERANCE) == [], (agreement, TOLERANCE)


def test_cams_from_an_engine_analysis_match_torch(analyzers, data_dir):
    """The class-map CAM comes from the engine's feature map; a gradient CAM runs on the torch mask-CN with the
    engine's mask-CN input."""
    from core.io.intake import load_image_file

    rgb = load_image_file(validation_rows(1)["image_path"].iloc[0])
    reference, result = analyzers["torch"].analyze(rgb, cam=True), analyzers["onnxruntime"].analyze(rgb, cam=True)
    assert np.abs(result.cam - reference.cam).max() < 1e-3
    assert np.abs(analyzers["onnxruntime"].cam_for(rgb, "mel", "Grad-CAM++")
                  - analyzers["torch"].cam_for(rgb, "mel", "Grad-CAM++")).max() < 1e-3


def test_the_export_keeps_mask_cn_in_eval_mode_so_its_logits_match(repo_root, tmp_path):
    """torch.onnx.export restores the training flag of the module it is given; a wrapper left in training mode would
    turn mask-CN's head dropout on afterwards (logits off by up to 1.6, features equal)."""
    import onnxruntime

    model = load_fp32_network(repo_root / "weights", "mask_cn")
    inputs = example_inputs("mask_cn", (192, 256), (150, 200))
    path = export_network(model, "mask_cn", inputs, tmp_path / "mask_cn.onnx")
    assert not any(m.training for m in model.modules())
    with torch.inference_mode():
        logits, features = model.forward_with_features(*inputs)
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image_and_mask": inputs[0].numpy()})
    assert np.abs(got[1] - features.numpy()).max() < 1e-3
    assert np.abs(got[0] - logits.numpy()).max() < 1e-4 * max(1.0, float(logits.abs().max()))


def _weights_with_onnx_files(repo_root, onnx_cache, folder):
    """A weights folder whose model card lists the ONNX files (what the card-building step writes)."""
    weights = repo_root / "weights"
    card = load_card(weights)
    cached = onnx_engine.cache_folder(card)
    if not (cached / onnx_engine.CACHE_MANIFEST).is_file():
        onnx_engine.onnx_models(weights, card)
    folder.mkdir()
    for path in weights.iterdir():
        (folder / path.name).symlink_to(path)
    (folder / "model_card.json").unlink()
    raw = json.loads(json.dumps(card.raw))
    raw["files"].update(json.loads((cached / onnx_engine.CACHE_MANIFEST).read_text()))
    (folder / "model_card.json").write_text(json.dumps(raw))
    for file_name in ONNX_FILES.values():
        shutil.copy(cached / file_name, folder / file_name)
    return folder, load_card(folder), cached


def test_onnx_files_are_sha256_checked_in_the_weights_folder_and_the_cache(repo_root, onnx_cache, tmp_path):
    folder, card, cached = _weights_with_onnx_files(repo_root, onnx_cache, tmp_path / "weights")
    models = onnx_engine.onnx_models(folder, card)
    assert models["mask_cn"] == (folder / ONNX_FILES["mask_cn"]).read_bytes()  # from the weights folder
    damaged = bytearray((folder / ONNX_FILES["coarse_sn"]).read_bytes())
    damaged[len(damaged) // 2] ^= 1
    (folder / ONNX_FILES["coarse_sn"]).write_bytes(bytes(damaged))
    with pytest.raises(WeightsIntegrityError, match="does not match the model card"):
        onnx_engine.onnx_models(folder, card)
    # the cache: its own list of sha256, checked at every load
    copy = tmp_path / "cache" / cached.name
    shutil.copytree(cached, copy)
    (copy / ONNX_FILES["coarse_sn"]).write_bytes(bytes(damaged))
    os.environ[onnx_engine.CACHE_ENV] = str(tmp_path / "cache")
    try:
        with pytest.raises(WeightsIntegrityError, match="damaged export cache"):
            onnx_engine.onnx_models(repo_root / "weights", load_card(repo_root / "weights"))
    finally:
        os.environ[onnx_engine.CACHE_ENV] = str(onnx_cache)


def test_the_engine_is_chosen_by_lesionlens_engine(monkeypatch, caplog):
    monkeypatch.setenv(onnx_engine.ENGINE_ENV, "OpenVINO")
    assert onnx_engine.chosen_engine() == "openvino" and onnx_engine.chosen_engine("torch") == "torch"
    monkeypatch.delenv(onnx_engine.ENGINE_ENV)
    assert onnx_engine.chosen_engine() == onnx_engine.DEFAULT_ENGINE
    with pytest.raises(ValueError, match="torch, onnxruntime, openvino"):
        onnx_engine.chosen_engine("tensorrt")
    monkeypatch.setattr(onnx_engine.importlib.util, "find_spec", lambda name: None)  # as if not installed
    with caplog.at_level(logging.WARNING, logger=onnx_engine.__name__):
        assert onnx_engine.chosen_engine("onnxruntime") == "torch"
    assert "not installed" in caplog.text and "run in torch instead" in caplog.text
