"""Patient context (age, sex, site): one validation for the Analyze form, Batch, core.analysis.predict and the PDF; the
context head (core.decisions.context_head, fitted by calibration.fit_context) and how the Analyzer applies it."""
import json
import shutil

import numpy as np
import pytest

from core.data.classes import CLASS_CODES, class_index
from core.decisions.context_head import ContextHead
from core.decisions.decision_rule import DecisionRule
from core.data.patient_context import ENCODING, SITES, ContextError, PatientContext, read_context_csv


def test_missing_fields_are_allowed_and_values_are_normalised():
    assert PatientContext.parse() == PatientContext()
    assert not PatientContext.parse("", "unknown", None).given
    context = PatientContext.parse(" 61 ", "Male", "lower_extremity")
    assert context == PatientContext(61.0, "male", "lower extremity") and context.given
    assert ("Age", "61 years") in context.rows() and ("Sex", "not given") in PatientContext().rows()
    assert "acral" in SITES and len(SITES) == 14  # the HAM10000 vocabulary without "unknown"


@pytest.mark.parametrize("age, sex, site, message", [
    ("-3", None, None, "age -3 is outside 0-120 years"),
    ("old", None, None, "age 'old' is not a number of years"),
    (None, "x", None, "sex 'x' is not one of: female, male"),
    (None, None, "elbow", "site 'elbow' is not one of: abdomen"),
])
def test_bad_values_get_a_message_naming_the_field(age, sex, site, message):
    with pytest.raises(ContextError, match=message):
        PatientContext.parse(age, sex, site)


def test_csv_rows_are_read_by_image_name_and_errors_name_the_row(tmp_path):
    good = tmp_path / "m.csv"
    good.write_text("image,age,sex\nISIC_1.jpg,40,female\nISIC_2,,\n")
    assert read_context_csv(good) == {"ISIC_1": PatientContext(40.0, "female", None), "ISIC_2": PatientContext()}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,age,sex,site\nISIC_1,40,female,back\nISIC_2,40,female,moon\n")
    with pytest.raises(ContextError, match=r"bad.csv: row 3 \(ISIC_2\): site 'moon'"):
        read_context_csv(bad)
    odd = tmp_path / "odd.csv"
    odd.write_text("image,weight\nISIC_1,70\n")
    with pytest.raises(ContextError, match="unknown column"):
        read_context_csv(odd)
    with pytest.raises(ContextError, match="not found"):
        read_context_csv(tmp_path / "none.csv")


def test_context_head_shifts_nothing_without_context_and_checks_its_shape(card_with):
    head = ContextHead(np.arange(len(CLASS_CODES) * len(ENCODING), dtype=float).reshape(len(CLASS_CODES), -1) / 100)
    assert np.array_equal(head.shift([PatientContext()]), np.zeros((1, len(CLASS_CODES))))
    assert np.abs(head.shift([PatientContext(70, "male", "face")])).max() > 0.1
    logits = np.random.default_rng(0).normal(size=(2, 3, len(CLASS_CODES)))
    rule = DecisionRule(views=2, temperature=0.7)
    assert np.allclose(rule.probabilities(logits, head.shift([PatientContext()] * 3)), rule.probabilities(logits))
    assert ContextHead.from_card(card_with(patient_context={"shipped": False, "head": head.to_card()})) is None
    assert np.allclose(ContextHead.from_card(card_with(patient_context={"shipped": True, "head": head.to_card()})).weights,
                       head.weights)
    with pytest.raises(ValueError, match="shape"):
        ContextHead(np.zeros((len(CLASS_CODES), 3)))


def test_fitted_head_predicts_held_out_diagnoses_from_real_context(ham_split):
    """HAM10000 metadata carries real information (age, site) about the diagnosis: with uninformative image logits,
    a head fitted on train-split images predicts the val split's diagnoses far above chance."""
    from calibration.fit_context import fit_head, table_contexts

    train = ham_split[ham_split["split"] == "train"].sample(2000, random_state=0)
    val = ham_split[ham_split["split"] == "val"]
    labels = lambda t: np.array([class_index(d) for d in t["dx"]])  # noqa: E731
    rule = DecisionRule()
    head = fit_head(rule, np.zeros((1, len(train), len(CLASS_CODES))), labels(train), table_contexts(train))
    y = labels(val)
    probs = rule.probabilities(np.zeros((1, len(val), len(CLASS_CODES))), head.shift(table_contexts(val)))
    weight = 1 / np.bincount(y, minlength=len(CLASS_CODES))[y]
    balanced_nll = float((weight * -np.log(probs[np.arange(len(y)), y])).sum() / weight.sum())
    recall = [(probs.argmax(1)[y == k] == k).mean() for k in np.unique(y)]
    assert balanced_nll < 0.93 * np.log(len(CLASS_CODES)), balanced_nll  # log 7: no information
    assert np.mean(recall) > 0.25, recall  # balanced accuracy; chance 1/7


def test_analyzer_applies_a_shipped_context_head_only_to_given_context(repo_root, tmp_path, data_dir):
    """A card whose context head is in use: a given context moves the probabilities (and says so), an empty one
    gives exactly the image-only analysis. With the shipped card the result says whether context was used."""
    from core.analysis.inference import Analyzer
    from core.io.intake import load_image_file

    weights = tmp_path / "weights"
    shutil.copytree(repo_root / "weights", weights)
    card = json.loads((weights / "model_card.json").read_text())
    rgb = load_image_file(data_dir / "ham10000" / "images" / "ISIC_0024306.jpg")
    context = PatientContext(80, "male", "face")
    shipped = Analyzer.load(weights)
    plain = shipped.analyze(rgb)
    assert shipped.analyze(rgb, context=context).context_used == (ContextHead.from_card(shipped.card) is not None)
    head = np.zeros((len(CLASS_CODES), len(ENCODING)))
    head[CLASS_CODES.index("bcc"), ENCODING.index("site face")] = 3.0  # face -> much more bcc
    card["patient_context"] = {"shipped": True, "head": ContextHead(head).to_card()}
    (weights / "model_card.json").write_text(json.dumps(card))
    with_head = Analyzer.load(weights)
    given, empty = with_head.analyze(rgb, context=context), with_head.analyze(rgb, context=PatientContext())
    assert given.context_used and not empty.context_used
    assert given.probs["bcc"] > 2 * plain.probs["bcc"]
    assert empty.probs == plain.probs and empty.label == plain.label
    # the result knows the verdict the image alone gets, so the screen can say when the context decides the call
    assert given.level_without_context == plain.triage.level and empty.level_without_context is None
    assert given.view_probs.shape == (with_head.rule.views, len(CLASS_CODES))
    assert np.allclose(given.view_probs.mean(0), list(given.probs.values()))


def test_context_head_is_used_only_with_a_gain_beyond_noise_and_calibrated_probabilities(ham_split, monkeypatch):
    """context_report's decision: a head whose validation gain is beyond noise is still refused when its out-of-fold
    probabilities are miscalibrated (ECE above the decision rule's bound)."""
    import calibration.fit_context as fit_context

    val = ham_split[ham_split["split"] == "val"].sample(900, random_state=0)
    y = np.array([class_index(d) for d in val["dx"]])
    # informative image logits that carry the training prior (plain argmax favours nv): the class-balanced head
    # corrects the prior, so balanced accuracy (the criterion on HAM10000) rises well beyond noise
    prior = np.log(np.bincount(y, minlength=len(CLASS_CODES)) + 1.0)
    logits = (np.random.default_rng(0).normal(size=(1, len(val), len(CLASS_CODES)))
              + 1.5 * np.eye(len(CLASS_CODES))[y] + prior)
    monkeypatch.setattr(fit_context, "MAX_VALIDATION_ECE", 1.0)
    _, entry = fit_context.context_report(DecisionRule(), logits, val)
    assert entry["gain_beyond_noise"] and entry["calibrated"] and entry["shipped"], entry["gain_ci95"]
    assert set(entry["validation_ece"]) == {"image_only", "image_and_context"}
    monkeypatch.setattr(fit_context, "MAX_VALIDATION_ECE", entry["validation_ece"]["image_and_context"] - 1e-6)
    _, entry = fit_context.context_report(DecisionRule(), logits, val)
    assert entry["gain_beyond_noise"] and not entry["calibrated"] and not entry["shipped"]
