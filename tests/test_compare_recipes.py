"""train.compare_recipes: the held-out figures of training recipes and their paired differences."""
import argparse

import numpy as np
import pytest

from core.data.classes import CLASS_INDEX
from train.compare_recipes import (compare, ensemble_probabilities, member_probabilities, specificity_at_sensitivity,
                                   view_counts)

MEL, NV = CLASS_INDEX["mel"], CLASS_INDEX["nv"]


def test_specificity_at_90_percent_sensitivity_is_a_point_of_the_roc_curve():
    positive = np.array([True] * 10 + [False] * 4)
    score = np.array([0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6, 0.5, 0.5, 0.1, 0.2, 0.3, 0.55, 0.05])
    # 9 of 10 melanomas are caught at >= 0.5; of the benign lesions 0.2, 0.3 and 0.05 lie below it
    assert specificity_at_sensitivity(positive, score, ~positive) == 0.75
    assert specificity_at_sensitivity(positive & False, score, ~positive) is None


def test_a_member_compared_with_itself_differs_by_zero_and_a_better_ranking_by_more():
    rng = np.random.default_rng(0)
    labels = np.where(rng.uniform(size=200) < 0.3, MEL, NV)
    noisy = np.zeros((200, 7))
    noisy[:, MEL] = (labels == MEL) + rng.normal(0, 1.0, 200)
    clean = np.zeros((200, 7))
    clean[:, MEL] = (labels == MEL) + rng.normal(0, 0.2, 200)
    logits = {"noisy": np.stack([noisy, noisy]), "same": np.stack([noisy, noisy]), "clean": np.stack([clean, clean])}
    probs = {name: member_probabilities(v) for name, v in logits.items()}
    assert np.allclose(probs["noisy"].sum(1), 1)
    result = compare(labels, np.arange(200) // 2, probs, resamples=200)
    same = result["same"]["difference_to_noisy"]["melanoma_auc"]
    assert same["value"] == 0 and same["ci95"] == [0, 0]
    better = result["clean"]["difference_to_noisy"]["melanoma_auc"]
    assert better["value"] > 0.1 and better["ci95"][0] > 0
    assert result["clean"]["melanoma_auc"]["value"] > result["noisy"]["melanoma_auc"]["value"]


def test_a_view_count_averages_only_the_first_views():
    first, second = np.zeros((1, 7)), np.zeros((1, 7))
    first[0, MEL], second[0, NV] = 5.0, 5.0
    logits = np.stack([first, second])
    one, both = member_probabilities(logits, 1), member_probabilities(logits)
    assert one.argmax(1)[0] == MEL and one[0, MEL] > 0.9
    assert np.isclose(both[0, MEL], both[0, NV])
    assert view_counts("8,4,2,1") == [8, 4, 2, 1]
    for bad in ("0", "9", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            view_counts(bad)


def test_an_ensemble_averages_its_networks_probabilities():
    sure, unsure = np.zeros((2, 1, 7)), np.zeros((2, 1, 7))
    sure[:, 0, MEL] = 10.0
    both = ensemble_probabilities([sure, unsure])
    assert np.allclose(both, (member_probabilities(sure) + member_probabilities(unsure)) / 2)
    assert np.isclose(both.sum(), 1) and 0.5 < both[0, MEL] < 0.6
