"""The leave-one-source-out protocol (calibration.out_of_source) and its frozen-feature heads
(calibration.source_heads), on synthetic data with known structure: a held-out source must never influence the rules it
is judged by; the shipped card carries the rules and the figures the screens quote."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.data.classes import CLASS_INDEX, NUM_CLASSES
from core.decisions.model_card import card_from_dict
from core.decisions.uncertainty import UncertaintyLevels, probability_scores
from calibration.out_of_source import (HELD_OUT_CLEAR_MAX_MALIGNANT, HELD_OUT_CLEAR_MAX_MISSED, EvaluationImages,
                                       choose_clear, held_out_figures, held_out_predictions)
from calibration.source_heads import LinearHead, sample_weights, softmax

SOURCES = ["a", "b", "c"]
SETTING = {"referral_target": 0.9, "referral_fit": "every_source", "low_max_error": 0.08, "low_fit": "every_source", "uncertainty_score": "max_probability",
           "unusual_score": "feature_distance", "clear_max_malignant": 0.01, "clear_fit": "every_source",
           "clear_margin": 1.0}
WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def synthetic(seed: int = 0, n: int = 900, nevus_share: float = 0.0) -> EvaluationImages:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    labels[rng.uniform(size=n) < nevus_share] = CLASS_INDEX["nv"]
    logits = rng.normal(size=(n, NUM_CLASSES))
    logits[np.arange(n), labels] += rng.uniform(0, 4, n)
    probs = softmax(logits)
    return EvaluationImages(labels=labels, probs=probs, groups=np.arange(n).astype(str),
                            acquisition=np.array(SOURCES)[np.arange(n) % 3], is_val=rng.uniform(size=n) < 0.5,
                            uncertainty=probability_scores(probs), pooled=rng.normal(size=(n, 4)),
                            imagenet=rng.normal(size=(n, 4)))


def unusual_for(ev: EvaluationImages, calls: list):
    def unusual_without(source):
        calls.append(source)
        return {"feature_distance": ev.uncertainty["entropy"] + 0.1 * (ev.acquisition == source)}
    return unusual_without


def test_a_held_out_source_never_shapes_the_rules_it_is_judged_by():
    ev, calls = synthetic(), []
    held = held_out_predictions(ev, SETTING, SOURCES, unusual_for(ev, calls))
    assert sorted(calls) == SOURCES  # each source's OOD model is refitted without it
    # corrupt source a's validation labels: a's own verdicts must not move, the other sources' rules may
    corrupted = replace(ev, labels=np.where((ev.acquisition == "a") & ev.is_val, (ev.labels + 1) % NUM_CLASSES,
                                            ev.labels))
    again = held_out_predictions(corrupted, SETTING, SOURCES, unusual_for(corrupted, []))
    a = ev.acquisition == "a"
    assert (held["verdicts"][a] == again["verdicts"][a]).all() and (held["unc"][a] == again["unc"][a]).all()
    assert (held["sets"][a] == again["sets"][a]).all()
    assert (held["sets"][~a] != again["sets"][~a]).any() or (held["unc"][~a] != again["unc"][~a]).any()
    assert set(held["verdicts"]) <= {"refer", "review", "no_referral"}


def test_the_clear_rule_is_chosen_by_its_held_out_malignant_share():
    """Of the clear-nevus settings tried, the one kept clears lesions at the held-out sources with at most the issue's
    malignant share, loses at most the bound's share of any source's malignant lesions, and clears the most lesions
    among those that do."""
    ev = synthetic(seed=2, n=3000, nevus_share=0.5)
    trials = []
    chosen = choose_clear(ev, SOURCES, unusual_for(ev, []), SETTING, trials)
    _, pooled = held_out_figures(ev, chosen, SOURCES, unusual_for(ev, []))
    cleared = pooled["no_referral"]
    assert cleared["share"] > 0.05 and cleared["malignant_share"] <= HELD_OUT_CLEAR_MAX_MALIGNANT
    within = [t["pooled_no_referral_share"] for t in trials
              if (t["pooled_no_referral_malignant_share"] or 1) <= HELD_OUT_CLEAR_MAX_MALIGNANT
              and t["worst_source_malignant_cleared"] <= HELD_OUT_CLEAR_MAX_MISSED]
    assert cleared["share"] == max(within) and len(trials) == 18


def test_linear_head_learns_and_source_balanced_weights_equalise_sources():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, NUM_CLASSES, 700)
    x = rng.normal(size=(700, 16)) + 5 * np.eye(NUM_CLASSES, 16)[labels]
    head = LinearHead.fit(x, labels, np.ones(700), l2=1e-3)
    assert (head.logits(x).argmax(1) == labels).mean() > 0.95
    sources = np.array(["big"] * 600 + ["small"] * 100)
    w = sample_weights(labels, sources, source_balanced=True)
    assert abs(w[sources == "big"].sum() / w[sources == "small"].sum() - 1) < 0.25
    assert np.isclose(w.mean(), 1)


def test_the_shipped_card_quotes_out_of_source_figures():
    """The card the app ships was written by calibration.out_of_source: the screens' sentences quote held-out
    figures."""
    card = json.loads((WEIGHTS / "model_card.json").read_text())
    oos = card["out_of_source"]
    assert set(oos["rules_per_source"]) == set(oos["sources"]) and len(oos["sources"]) == 5
    assert card["referral"]["threshold"] == card["triage"]["thresholds"]["mel"]
    assert set(card["triage"]["thresholds"]) == {"mel", "bcc", "akiec"}
    assert 0 < card["triage"]["clear_threshold"] < 1 and "clear_fit" in card["triage"]
    cleared = card["triage"]["out_of_source"]["no_referral"]
    assert len(cleared["malignant_share_ci95"]) == 2 and len(cleared["share_ci95"]) == 2
    ranking = oos["clear_score_auc"]  # why the nevus probability clears: its ranking of the lesions not referred
    assert ranking["images"] > 0 and {"one_minus_nevus_probability", "malignant_probability"} <= set(ranking)
    levels = UncertaintyLevels.from_card(card_from_dict(card))
    assert "clinics the model was not trained on" in levels.sentence("low")
    assert f"{card['uncertainty']['out_of_source_error_rates']['low']:.0%}" in levels.sentence("low")
