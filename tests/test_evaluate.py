"""calibration.calibrate end to end on tiny trained runs: every section of the card is fitted and the app's reader
accepts it, the files verify, the Analyzer applies the same rules, a step run on its own keeps the other steps'
sections, and the folder report gives the numbers core.analysis.folder_evaluation gives."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from core.data.classes import CLASS_CODES
from core.analysis.inference import Analyzer
from core.io.intake import load_image_file
from core.io.weights_io import sha256_of
from core.decisions.model_card import REQUIRED_SECTIONS, load_card, read_card_json
from calibration import calibrate, evaluate


@pytest.fixture(scope="module")
def tiny_calibration(tiny_runs, data_dir, tmp_path_factory):
    """calibration.calibrate on the tiny runs, everything small: (weights folder, card, its working folder)."""
    runs, _ = tiny_runs
    work = tmp_path_factory.mktemp("calibration")
    weights = work / "weights"
    calibrate.main(["--data-dir", str(data_dir), "--runs", str(runs), "--weights", str(weights), "--max-images", "3",
                    "--use-cache", "false", "--oos-out", str(work / "oos"), "--measures", str(work / "measures"),
                    "--dermoscopy-features", str(work / "features.npz"), "--followup-pairs", "2",
                    "--results", str(work / "results.md")])
    return weights, read_card_json(weights), work


@pytest.fixture(scope="module")
def tiny_card(tiny_calibration):
    weights, card, _ = tiny_calibration
    return weights, card


def test_calibrate_writes_every_section_the_app_needs(tiny_calibration, tiny_runs):
    weights, card, work = tiny_calibration
    typed = load_card(weights)  # the app's reader: raises on any missing section
    assert set(REQUIRED_SECTIONS) <= set(card)
    assert typed.split.seed == json.loads((tiny_runs[0] / "mask_cn" / "history.json").read_text())["config"]["split_seed"]
    assert typed.referral.threshold == typed.triage.thresholds["mel"]  # the out-of-source fit supersedes evaluate's
    assert "dermoscopy_check.safetensors" in typed.files and "out_of_source" in card
    band = json.loads((weights / "followup_noise.json").read_text())
    assert band["weights_version"] == typed.version and band["n_pairs"] == 2
    assert f"Model card {typed.version}" in (work / "results.md").read_text()
    assert not list(weights.glob(".model_card.*"))  # the atomic write left no temporary file
    predictions = pd.read_csv(weights / "test_predictions.csv")
    assert set(predictions["triage"]) <= {"not_assessed", "refer", "review", "no_referral"}


def test_the_card_holds_every_rule_and_verifiable_files(tiny_card):
    weights, card = tiny_card
    assert card["decision_rule"]["views"] in (1, 4, 8) and card["decision_rule"]["temperature"] > 0
    assert card["referral"]["score"] in ("mel", "malignant") and 0 <= card["referral"]["threshold"] <= 1
    assert len(card["uncertainty"]["cuts"]) == 2 and card["uncertainty"]["cuts"][0] <= card["uncertainty"]["cuts"][1]
    assert set(card["ood"]["thresholds"]) == {"chroma", "imagenet_distance", "unusual"}
    assert card["ood"]["unusual_score"] in ("feature_distance", "case_distance", "imagenet_distance")
    assert card["ood"]["results"]["real_non_dermoscopy_photos"]["n"] == 21
    for name, entry in card["files"].items():
        assert sha256_of(weights / name) == entry["sha256"], name
    assert {"coarse_sn.safetensors", "mask_cn.safetensors", "enhanced_sn.safetensors", "ood.safetensors",
            "case_index.safetensors", "case_index.csv"} <= set(card["files"])
    for name in ("ham10000_test", "isic2017_test"):
        ci = card["metrics"][name]["classification"]["mask_cn"]["ci"]["macro_auc"]
        assert ci["ci95"][0] <= ci["value"] <= ci["ci95"][1]
    assert card["input_size"]["segmenter"] == {"height": 96, "width": 128}
    assert card["preprocessing"]["colour_constancy"] is True
    assert "gain_ci95" in card["patient_context"]


def test_the_card_names_the_data_mask_cn_was_trained_on(tmp_path):
    """The training-data line comes from the mask-CN run's own config, so a fine-tune on more sources says so."""
    from calibration.model_card import classification_data

    (tmp_path / "mask_cn").mkdir()
    history = tmp_path / "mask_cn" / "history.json"
    history.write_text(json.dumps({"config": {"sources": "ham10000,isic2017,acral", "leave_out": ""}, "history": []}))
    assert classification_data(tmp_path).startswith("HAM10000 train + ISIC 2017 train (85 %) + ISIC Archive acral")
    history.write_text(json.dumps({"config": {"sources": "ham10000,acral", "leave_out": "acral_imperial"}}))
    assert "ISIC 2017" not in classification_data(tmp_path)
    assert classification_data(tmp_path).endswith("without acral_imperial, CC BY-NC 4.0")


def test_predictions_csv_applies_the_cards_rules(tiny_card):
    weights, card = tiny_card
    rows = pd.read_csv(weights / "test_predictions.csv")
    assert set(rows["source"]) == {"ham10000", "isic2017"}
    expected_refer = np.where(rows["mel_score"] >= card["referral"]["threshold"] - 1e-5, "yes", "no")
    assert (rows["refer"] == expected_refer).all()
    low, high = card["uncertainty"]["cuts"]
    levels = np.where(rows["uncertainty_score"] < low, "low", np.where(rows["uncertainty_score"] < high, "moderate", "high"))
    assert (rows["uncertainty_level"] == levels).all()
    assert (rows["pred"] == rows[[f"p_{c}" for c in CLASS_CODES]].idxmax(axis=1).str[2:]).all()


def test_the_analyzer_applies_the_same_rules(tiny_card, ham_split):
    weights, card = tiny_card
    analyzer = Analyzer.load(weights)
    row = ham_split[ham_split["split"] == "test"].iloc[0]
    result = analyzer.analyze(load_image_file(row["image_path"]))
    assert analyzer.rule.views == card["decision_rule"]["views"]
    assert result.refer == (result.mel_score >= card["referral"]["threshold"])
    assert result.uncertainty_level == analyzer.uncertainty.level(result.uncertainty_score)
    assert result.ood_level in ("in", "unusual", "clinical_photo", "not_skin")
    assert len(result.similar) == 8 and result.similar["similarity"].is_monotonic_decreasing
    assert abs(sum(result.probs.values()) - 1) < 1e-5


def test_folder_report_gives_the_numbers_of_core_folder_evaluation(tiny_card, ham_split, tmp_path):
    """A researcher's folder (one folder per class, one unreadable file): the CLI report and the function behind
    the dashboard page agree, and the bad file is a failure row, not a crash."""
    from core.data.datasets import load_manifest
    from core.analysis.folder_evaluation import evaluate_folder

    weights, _ = tiny_card
    folder = tmp_path / "mine"
    for code in ("mel", "nv", "bkl"):
        (folder / code).mkdir(parents=True)
        for path in ham_split[(ham_split["split"] == "test") & (ham_split["dx"] == code)]["image_path"].head(3):
            shutil.copy(path, folder / code)
    (folder / "nv" / "broken.jpg").write_text("not an image")
    out = tmp_path / "report"
    summary = evaluate.main(["--data-dir", str(folder), "--weights", str(weights), "--report", str(out)])
    written = json.loads((out / "report.json").read_text())
    direct = evaluate_folder(Analyzer.load(weights), load_manifest(folder)).summary
    assert written == json.loads(json.dumps(direct)) == json.loads(json.dumps(summary))
    # images evaluated (in the figures) and refused ones (listed apart) make up the nine readable images
    assert written["n_images"] + written["n_not_dermoscopy"] == 9 and written["n_failed"] == 1
    assert pd.read_csv(out / "failures.csv")["image_id"].tolist() == ["broken"]
    assert len(pd.read_csv(out / "predictions.csv")) == 9 and "<table" in (out / "report.html").read_text()


def test_enhanced_sn_gets_the_map_its_training_computed(tiny_card, ham_split):
    """The localisation map the Analyzer feeds enhanced-SN is the one train.stages computed for enhanced-SN's
    training (core.models.mbdcnn.run_chain on the same network inputs, with the shipped networks), without flip TTA."""
    from core.models.mbdcnn import run_chain
    from train.stages import load_upstream

    weights, _ = tiny_card
    analyzer = Analyzer.load(weights, precision="fp32")  # the hand-off itself; bf16's agreement: test_precision.py
    analyzer.seg_views = (0,)
    captured = []
    hook = analyzer.enhanced_sn.register_forward_pre_hook(lambda module, args: captured.append(args[1].clone()))
    rgb = load_image_file(ham_split[ham_split["split"] == "test"]["image_path"].iloc[3])
    analyzer.analyze(rgb)
    hook.remove()
    seg_u8, cls_u8, _ = analyzer.network_images(rgb)
    coarse_sn, _ = load_upstream("coarse_sn", str(weights / "coarse_sn.safetensors"))
    mask_cn, _ = load_upstream("mask_cn", str(weights / "mask_cn.safetensors"))
    chain = run_chain(coarse_sn, mask_cn, seg_u8[None], cls_u8[None])
    assert captured[0].shape == chain["localisation"].shape
    assert np.allclose(captured[0].numpy(), chain["localisation"].numpy(), atol=2e-3)


def test_evaluate_alone_keeps_the_other_steps_sections(tiny_calibration, tiny_runs, data_dir):
    """Re-running the documented evaluation after calibration used to write a fresh card without triage, image
    quality and dermoscopy check: the app then triaged on melanoma alone, without a word. (Last in this file: it
    rewrites the tiny card the tests above read.)"""
    weights, card, _ = tiny_calibration
    runs, _ = tiny_runs
    evaluate.main(["--data-dir", str(data_dir), "--runs", str(runs), "--weights", str(weights), "--max-images", "3",
                   "--use-cache", "false"])
    after = read_card_json(weights)
    for section in ("triage", "image_quality", "dermoscopy_check", "conformal", "out_of_source"):
        assert after[section] == card[section], section
    assert "dermoscopy_check.safetensors" in after["files"]
    load_card(weights)


def test_evaluate_alone_refuses_to_write_a_partial_card(tiny_runs, data_dir, tmp_path):
    from core.decisions.model_card import ModelCardError

    runs, _ = tiny_runs
    with pytest.raises(ModelCardError, match="model card not found. Build it with `python -m calibration.calibrate"):
        evaluate.main(["--data-dir", str(data_dir), "--runs", str(runs), "--weights", str(tmp_path), "--max-images",
                       "2"])
    assert not (tmp_path / "model_card.json").exists()
