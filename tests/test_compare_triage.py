"""calibration.compare_triage: candidates judged by the card's held-out triage protocol, with paired differences."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from core.data.classes import CLASS_CODES, CLASS_INDEX, NUM_CLASSES
from core.decisions.decision_rule import DecisionRule
from calibration.compare_triage import (FIGURES, fitted_rule, main, mean_probabilities, paired_differences,
                                        parse_candidate)
from calibration.fit_rules import fit_temperature

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def test_a_candidate_names_one_folder_or_several_joined_by_plus():
    assert parse_candidate("both=weights+runs/v3") == ("both", [Path("weights"), Path("runs/v3")])
    for bad in ("weights", "=weights", "name="):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_candidate(bad)


def test_an_ensemble_averages_each_folders_probabilities_under_its_own_rule():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5, NUM_CLASSES)), rng.normal(size=(8, 5, NUM_CLASSES))
    sharp, soft = DecisionRule(8, 0.5, (0.0,) * NUM_CLASSES), DecisionRule(4, 2.0, (0.0,) * NUM_CLASSES)
    probs, per_view = mean_probabilities([a, b], [sharp, soft])
    assert np.allclose(probs, (sharp.probabilities(a) + soft.probabilities(b)) / 2)
    assert per_view.shape == (4, 5, NUM_CLASSES)  # the views both rules average
    alone, _ = mean_probabilities([a], [sharp])
    assert np.allclose(alone, sharp.probabilities(a))


def test_the_shipped_folder_against_itself_differs_by_zero_on_real_images(data_dir, tmp_path):
    out = tmp_path / "compare.json"
    file = WEIGHTS / "mask_cn.safetensors"
    result = main(["--data-dir", str(data_dir), "--candidate", f"shipped={WEIGHTS}",
                   "--candidate", f"twice={WEIGHTS}+{WEIGHTS}", "--candidate", f"file={file}",
                   "--max-images", "4", "--resamples", "50", "--out", str(out)])
    assert json.loads(out.read_text()).keys() == {"shipped", "twice", "file"}
    # a weight file gets a decision rule fitted on these validation images, not the card's
    card_rule = json.loads((WEIGHTS / "model_card.json").read_text())["decision_rule"]
    assert result["file"]["decision_rules"][0]["temperature"] != card_rule["temperature"]
    assert result["twice"]["decision_rules"][0]["temperature"] == card_rule["temperature"]
    shipped = result["shipped"]
    assert set(shipped["per_source"]) >= {"vidir_molemax", "rosendahl", "isic2017"}
    for figure in FIGURES:
        difference = result["twice"]["difference_to_shipped"][figure]
        assert difference["value"] in (0.0, None)
        assert result["twice"]["pooled"][figure]["value"] == shipped["pooled"][figure]["value"]
    images = sum(entry["images"] for entry in shipped["per_source"].values())
    assert images == shipped["pooled"]["images"]
    sensitivity = shipped["pooled"]["melanoma_sensitivity"]["value"]
    assert 0 <= sensitivity <= 1 and shipped["setting"]["referral_target"] in (0.80, 0.85, 0.90, 0.95)


def test_paired_differences_follow_the_verdicts_lesion_by_lesion():
    labels = np.array([CLASS_INDEX["mel"]] * 4 + [CLASS_INDEX["nv"]] * 6)
    ev = SimpleNamespace(labels=labels, groups=np.arange(10).astype(str))
    refer_all = {"verdicts": np.array(["refer"] * 10, dtype=object), "mel_refer": np.ones(10, bool)}
    # the candidate clears the six nevi and still refers the four melanomas
    sharper = {"verdicts": np.array(["refer"] * 4 + ["no_referral"] * 6, dtype=object),
               "mel_refer": np.array([True] * 4 + [False] * 6)}
    diff = paired_differences(ev, sharper, refer_all, resamples=100)
    assert diff["benign_specificity"]["value"] == 1.0 and diff["melanoma_sensitivity"]["value"] == 0.0
    assert diff["no_referral_share"]["value"] == 0.6
    assert diff["no_referral_malignant_share"]["value"] is None  # the baseline clears nothing
    assert diff["benign_specificity"]["ci95"] == [1.0, 1.0]
    assert diff["benign_over_melanoma_threshold"]["value"] == -1.0


def test_the_plain_rule_form_keeps_every_view_and_fits_the_temperature_alone():
    rng = np.random.default_rng(1)
    n = 300
    dx = np.array(CLASS_CODES)[rng.integers(0, NUM_CLASSES, n)]
    evaluation = pd.DataFrame({"dx": dx, "split": np.where(np.arange(n) < 200, "val", "test"),
                               "source": np.where(np.arange(n) % 2, "ham10000", "isic2017")})
    # confident (a margin of 8) and wrong three times in ten: the fitted temperature must soften it
    shown = np.where(rng.uniform(size=n) < 0.7, [CLASS_INDEX[d] for d in dx], rng.integers(0, NUM_CLASSES, n))
    logits = rng.normal(size=(8, n, NUM_CLASSES)) * 0.3
    logits[:, np.arange(n), shown] += 8
    train = pd.DataFrame({"dx": dx, "source": "ham10000"})
    plain = fitted_rule(evaluation, logits, train, "plain")
    assert plain.views == 8 and not any(plain.logit_offsets)
    val = np.arange(n) < 200
    expected = fit_temperature(logits[:, val], np.array([CLASS_INDEX[d] for d in dx[val]]), np.zeros(NUM_CLASSES))
    assert plain.temperature == expected and expected > 1  # the logits were made overconfident
