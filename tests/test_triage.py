"""The triage verdict, conformal prediction sets, skin tone, acquisition sources and the source-robust rule fits."""
from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from core.data.acquisition import SOURCE_NAMES, acquisition_sources
from core.data.classes import CLASS_CODES, CLASS_INDEX
from core.decisions.conformal import PredictionSets
from core.lesion.skin_tone import ita_degrees, ita_group
from core.decisions.triage import TriageRule
from calibration.fit_source_robust import clear_threshold, conformal_quantile, low_uncertainty_cut, referral_threshold

DATA_DIR = Path(os.environ.get("DATA_DIR", "../shared/data"))


def probs_with(**values) -> np.ndarray:
    p = np.zeros(len(CLASS_CODES))
    for code, v in values.items():
        p[CLASS_INDEX[code]] = v
    rest = [i for i, c in enumerate(CLASS_CODES) if c not in values]
    p[rest] = (1 - p.sum()) / len(rest)
    return p


RULE = TriageRule({"mel": 0.02, "bcc": 0.05, "akiec": 0.05}, 0.9, 0.9, 1.0,
                  out_of_source={"refer": {"melanoma_sensitivity": 0.88, "malignant_sensitivity": 0.9,
                                           "benign_specificity": 0.6},
                                 "review": {"malignant_share": 0.2, "error_rate": 0.4},
                                 "no_referral": {"malignant_share": 0.03, "malignant_share_range": [0.0, 0.2]}})


def test_precedence_refused_beats_everything():
    """A refused image gets a verdict of its own that sends the lesion back to the clinician, never silence."""
    v = RULE.verdict(probs_with(mel=0.9), "high", "clinical_photo", "This looks like a clinical (camera) photo.")
    assert v.level == "not_assessed" and "camera" in v.text
    assert v.text.startswith("No automated assessment: review this lesion yourself.")
    assert "says nothing about the lesion" in v.text and "%" not in v.text


def test_a_malignant_top_class_is_referred_even_when_melanoma_is_low():
    """The old screen showed 'akiec 86.6 %' beside 'below the referral threshold': now a BCC / AKIEC refers too."""
    v = RULE.verdict(probs_with(akiec=0.866, mel=0.001), "low", "in")
    assert v.level == "refer" and v.firing == ("akiec",)
    assert "86.6%" in v.text and "referred 90% of malignant lesions, and 40% of benign lesions too" in v.text
    assert "outranks" not in v.text  # the referred class is the top class: nothing to explain


def test_a_referral_says_why_it_outranks_a_benign_top_class():
    """The screen showed a red Refer above a large 'Melanocytic nevus 55 %': the verdict now says why."""
    v = RULE.verdict(probs_with(nv=0.55, bcc=0.06, mel=0.001, akiec=0.001), "low", "in")
    assert v.level == "refer" and v.firing == ("bcc",)
    assert "outranks the most likely class, melanocytic nevus (55.0%)" in v.text
    assert "refer 90% of malignant lesions at clinics the model was not trained on" in v.text


def test_a_call_inside_the_spread_of_the_test_time_views_is_marked_as_noise():
    """Views on both sides of a threshold: the call is within its noise, referred or not; views all on one side: no
    mark. Only the malignant classes' thresholds count."""
    p = probs_with(nv=0.9, bcc=0.052, mel=0.001, akiec=0.001)
    views = np.tile(p, (8, 1))
    views[:4, CLASS_INDEX["bcc"]], views[4:, CLASS_INDEX["bcc"]] = 0.031, 0.073
    v = RULE.verdict(p, "low", "in", view_probs=views)
    assert v.level == "refer" and v.borderline == ("bcc",)
    assert "within the noise of its threshold" in v.text and "from 3.1% to 7.3%, on both sides of its 5.0%" in v.text
    below = probs_with(nv=0.95, bcc=0.045, mel=0.001, akiec=0.001)
    assert RULE.verdict(below, "low", "in", view_probs=views).borderline == ("bcc",)
    steady = np.tile(p, (8, 1))
    assert RULE.verdict(p, "low", "in", view_probs=steady).borderline == ()
    assert "noise" not in RULE.verdict(p, "low", "in").text  # one view: no spread to judge


def test_each_verdict_quotes_one_held_out_figure_and_none_under_another_threshold():
    review = RULE.verdict(probs_with(nv=0.8, mel=0.001, bcc=0.001, akiec=0.001), "moderate", "in")
    assert review.evidence.count("%") == 1 and "20.0% of the images sent to review" in review.evidence
    p = probs_with(mel=0.1, bcc=0.001, akiec=0.001)
    assert RULE.verdict(p, "low", "in").evidence and RULE.verdict(p, "low", "in", mel_threshold=0.02).evidence
    assert RULE.verdict(p, "low", "in", mel_threshold=0.05).evidence == ""  # the card's figures are not its figures


def test_refer_wins_over_uncertainty_and_unusual():
    v = RULE.verdict(probs_with(mel=0.3), "high", "unusual")
    assert v.level == "refer"


def test_doubt_gives_review_not_reassurance():
    v = RULE.verdict(probs_with(nv=0.95, mel=0.001, bcc=0.001, akiec=0.001), "low", "unusual")
    assert v.level == "review" and "unlike the training images" in v.text
    v = RULE.verdict(probs_with(nv=0.95, mel=0.001, bcc=0.001, akiec=0.001), "moderate", "in",
                     quality_problems=("the image is out of focus",))
    assert v.level == "review" and "out of focus" in v.text
    v = RULE.verdict(probs_with(nv=0.95, mel=0.001, bcc=0.001, akiec=0.001), "high", "in")
    assert v.level == "review" and "uncertainty is high" in v.text


def test_only_a_clear_nevus_is_cleared():
    """Below every referral threshold is not enough: a confident benign keratosis or a nevus below the clear
    threshold goes to review, saying why; a nevus at or above it with agreeing views is cleared, moderate
    uncertainty (which benign class) included."""
    keratosis = RULE.verdict(probs_with(bkl=0.97, mel=0.001, bcc=0.001, akiec=0.001), "low", "in")
    assert keratosis.level == "review" and "not a clear melanocytic nevus" in keratosis.text
    unsure = RULE.verdict(probs_with(nv=0.85, mel=0.001, bcc=0.001, akiec=0.001), "low", "in")
    assert unsure.level == "review" and "nevus 85.0%, below the 90.0% that clears a lesion" in unsure.text
    clear = RULE.verdict(probs_with(nv=0.9, mel=0.001, bcc=0.001, akiec=0.001), "moderate", "in")
    assert clear.level == "no_referral" and "A clear melanocytic nevus (nevus 90.0%, at or above the 90.0%" in clear.text


def test_a_clear_nevus_must_stay_well_below_every_referral_threshold():
    """With a margin of 0.5, a confident nevus whose melanoma probability is below its threshold but above half of it
    goes to review, saying so; the same nevus clearly below half of it is cleared; both verdict paths agree."""
    rule = TriageRule({"mel": 0.02, "bcc": 0.05, "akiec": 0.05}, 0.9, 0.9, 0.5)
    close = probs_with(nv=0.95, mel=0.015, bcc=0.001, akiec=0.001)
    v = rule.verdict(close, "low", "in")
    assert v.level == "review" and "melanoma 1.50% is not below 1.00%, the 50% of its referral threshold (2.00%)" in v.text
    far = probs_with(nv=0.95, mel=0.005, bcc=0.001, akiec=0.001)
    assert rule.verdict(far, "low", "in").level == "no_referral"
    assert list(rule.levels(np.stack([close, far]), ["low", "low"], ["in", "in"])) == ["review", "no_referral"]
    assert RULE.verdict(close, "low", "in").level == "no_referral"  # margin 1: below the threshold is enough


def test_no_referral_says_what_it_missed_out_of_source():
    v = RULE.verdict(probs_with(nv=0.97, mel=0.001, bcc=0.001, akiec=0.001), "low", "in")
    assert v.level == "no_referral" and "3.0% of the images" in v.text and "does not rule" in v.text
    assert "(0%-20% across the held-out sources" in v.text  # how far one clinic strayed from the pooled figure


def test_session_threshold_replaces_melanomas_only():
    p = probs_with(nv=0.9, mel=0.08, bcc=0.001, akiec=0.001)
    assert RULE.verdict(p, "low", "in").level == "refer"
    assert RULE.verdict(p, "low", "in", mel_threshold=0.5).level == "no_referral"


def test_vectorised_levels_agree_with_single_verdicts():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASS_CODES)) * 0.3, size=200)
    unc = rng.choice(["low", "moderate", "high"], 200)
    ood = rng.choice(["in", "unusual", "not_skin"], 200)
    probs[::3] = probs_with(nv=0.95, mel=0.001, bcc=0.001, akiec=0.001)  # clear nevi, so every level occurs
    levels = RULE.levels(probs, unc, ood)
    assert set(levels) == {"not_assessed", "refer", "review", "no_referral"}
    assert list(levels) == [RULE.verdict(p, u, o).level for p, u, o in zip(probs, unc, ood)]


def test_rule_validates_and_round_trips(card_with):
    with pytest.raises(ValueError):
        TriageRule({"nv": 0.1}, 0.9, 0.9, 1.0)
    with pytest.raises(ValueError):
        TriageRule({"mel": 1.5}, 0.9, 0.9, 1.0)
    with pytest.raises(ValueError):
        TriageRule({"mel": 0.1}, 0.9, 1.2, 1.0)
    with pytest.raises(ValueError):
        TriageRule({"mel": 0.1}, 0.9, 0.9, 0.0)
    assert TriageRule.from_card(card_with(triage=RULE.to_card())) == RULE


def test_prediction_sets_hold_the_top_class_and_everything_above_the_cut():
    sets = PredictionSets(0.8, 0.9)
    p = probs_with(nv=0.6, mel=0.25, bkl=0.1)
    assert sets.classes(p) == ["nv", "mel"]
    assert PredictionSets(0.0, 0.9).classes(p) == ["nv"]  # q = 0: the top class alone
    with pytest.raises(ValueError):
        PredictionSets(1.2)


def test_conformal_quantile_covers_every_source():
    rng = np.random.default_rng(1)
    p_true = np.r_[rng.uniform(0.5, 1, 200), rng.uniform(0.0, 1, 200)]  # the second source is harder
    sources = np.array(["easy"] * 200 + ["hard"] * 200)
    q = conformal_quantile(p_true, sources, 0.9)
    for s in ("easy", "hard"):
        assert ((1 - p_true[sources == s]) <= q).mean() >= 0.9


def test_referral_threshold_holds_in_each_source_and_ignores_tiny_ones():
    rng = np.random.default_rng(2)
    score = np.r_[rng.uniform(0.2, 1, 100), rng.uniform(0, 1, 100), [0.0] * 3]
    positive = np.ones(203, bool)
    sources = np.array(["a"] * 100 + ["b"] * 100 + ["tiny"] * 3)
    t = referral_threshold(score, positive, sources, 0.9)["threshold"]
    for s in ("a", "b"):
        assert (score[sources == s] >= t).mean() >= 0.9
    assert t > 0  # the 3-case source does not drag the threshold to 0


def test_low_cut_keeps_every_source_under_its_error_bound():
    rng = np.random.default_rng(3)
    score = rng.uniform(0, 1, 600)
    sources = np.array(["a", "b"] * 300)
    errors = rng.uniform(0, 1, 600) < np.where(sources == "a", score, score * 0.5)
    cut = low_uncertainty_cut(score, errors, sources, 0.1)
    for s in ("a", "b"):
        chosen = (sources == s) & (score < cut)
        assert errors[chosen].mean() <= 0.1
    assert ((sources == "b") & (score < cut)).sum() > 0


def test_clear_threshold_keeps_every_source_under_its_malignant_share():
    """Above the threshold, each source's malignant share stays within the bound; a source where even the most
    confident nevi are often malignant clears nothing at all (1.0)."""
    rng = np.random.default_rng(4)
    score = rng.uniform(0, 1, 800)
    sources = np.array(["a", "b"] * 400)
    malignant = rng.uniform(0, 1, 800) < np.where(sources == "a", 0.6, 0.2) * (1 - score) ** 2
    t = clear_threshold(score, malignant, sources, 0.02)
    for s in ("a", "b"):
        above = (sources == s) & (score >= t)
        assert above.sum() >= 50 and malignant[above].mean() <= 0.02
    cut_of = {s: clear_threshold(score[sources == s], malignant[sources == s], sources[sources == s], 0.02)
              for s in ("a", "b")}
    assert t == cut_of["a"] > cut_of["b"]  # the harder source binds
    hopeless = np.ones(800, bool)
    assert clear_threshold(score, hopeless, sources, 0.02) == 1.0


def test_skin_tone_orders_light_and_dark_skin():
    lesion = np.zeros((120, 160), np.uint8)
    lesion[40:80, 60:100] = 255
    light = np.full((120, 160, 3), (235, 200, 180), np.uint8)
    dark = np.full((120, 160, 3), (95, 60, 40), np.uint8)
    a_light, a_dark = ita_degrees(light, lesion), ita_degrees(dark, lesion)
    assert a_light > 41 > 10 > a_dark
    assert ita_group(a_light) in ("very light", "light") and ita_group(a_dark) in ("brown", "dark")
    assert ita_group(float("nan")) == "unknown"
    all_lesion = np.full((120, 160), 255, np.uint8)
    assert math.isnan(ita_degrees(light, all_lesion))


def test_acquisition_sources_of_the_real_data():
    from core.data.datasets import load_manifest

    manifest = load_manifest(DATA_DIR)
    sources = acquisition_sources(manifest, DATA_DIR)
    assert set(sources) == set(SOURCE_NAMES)
    ham = manifest["source"] == "ham10000"
    assert (sources[~ham] == manifest.loc[~ham, "source"]).all()  # isic2017, acral: one source each
    assert sources[ham].value_counts()["vidir_molemax"] == 3954
    by_contributor = acquisition_sources(manifest, DATA_DIR, acral_contributors=True)
    acral = manifest["source"] == "acral"
    assert (by_contributor[~acral] == sources[~acral]).all()
    assert by_contributor[acral].value_counts().to_dict() == {"acral_imperial": 896, "acral_ids": 665, "acral_other": 42}
    broken = manifest[ham].head(3).assign(image_id="ISIC_nonexistent")
    with pytest.raises(ValueError, match="no acquisition source"):
        acquisition_sources(pd.concat([manifest[ham].head(2), broken]), DATA_DIR)
