"""The typed model card (core.decisions.model_card): the shipped card reads into typed sections, a card lacking a
section or field the app needs fails at load with a sentence naming it, nothing falls back to a default, the app
refuses to start on such a card, and calibration never writes one (calibration.card_io)."""
from __future__ import annotations

import json
import shutil

import pytest

from core.decisions.model_card import (REQUIRED_SECTIONS, ModelCardError, card_from_dict, load_card,
                                       read_card_json)
from core.decisions.referral import ReferralRule
from core.decisions.triage import TriageRule


@pytest.fixture(scope="module")
def shipped(repo_root) -> dict:
    return read_card_json(repo_root / "weights")


def test_the_shipped_card_reads_into_typed_sections(repo_root, shipped):
    card = load_card(repo_root / "weights")
    assert card.referral.threshold == shipped["referral"]["threshold"] < 0.05
    assert card.triage.thresholds == shipped["triage"]["thresholds"]
    assert card.decision_rule.views == shipped["decision_rule"]["views"]
    assert card.uncertainty.cuts == tuple(shipped["uncertainty"]["cuts"])
    assert card.ood.thresholds["unusual"] == shipped["ood"]["thresholds"]["unusual"]
    assert card.dermoscopy_check.threshold == shipped["dermoscopy_check"]["threshold"]
    assert card.image_quality.thresholds == shipped["image_quality"]["thresholds"]
    assert card.conformal.quantile == shipped["conformal"]["quantile"]
    assert card.split.seed == 42 and card.split.file is None
    assert card.retrieval.knn_k == 10 and card.retrieval.k == 8
    assert card.files["mask_cn.safetensors"].sha256 == shipped["files"]["mask_cn.safetensors"]["sha256"]
    assert card.model_version == f"{shipped['version']} ({shipped['files']['mask_cn.safetensors']['sha256'][:12]})"
    assert card.display("headline") == shipped["headline"]
    with pytest.raises(KeyError, match="typed attribute"):
        card.display("referral")  # a section the app needs is read typed, never as a dict


@pytest.mark.parametrize("section", sorted(REQUIRED_SECTIONS))
def test_a_card_without_a_required_section_names_it(tmp_path, shipped, section):
    broken = {k: v for k, v in shipped.items() if k != section}
    (tmp_path / "model_card.json").write_text(json.dumps(broken))
    with pytest.raises(ModelCardError) as info:
        load_card(tmp_path)
    message = str(info.value)
    assert f"has no `{section}` section" in message and "python -m calibration.calibrate" in message, message
    assert f"its {REQUIRED_SECTIONS[section]} step writes it" in message, message


@pytest.mark.parametrize("backbones", [None, {"coarse_sn": "efficientnet_lite0", "mask_cn": "efficientnet_lite1"}])
def test_a_card_must_name_the_backbone_of_every_network(shipped, backbones):
    broken = {k: v for k, v in shipped.items() if k != "backbones"}
    if backbones is not None:
        broken["backbones"] = backbones
    with pytest.raises(ModelCardError, match=r"backbone of each network \(coarse_sn, mask_cn, enhanced_sn\)"):
        card_from_dict(broken)


@pytest.mark.parametrize("section, field", [("referral", "threshold"), ("triage", "thresholds"),
                                            ("triage", "clear_threshold"), ("triage", "clear_margin"),
                                            ("uncertainty", "score"), ("ood", "unusual_score"),
                                            ("dermoscopy_check", "threshold"), ("image_quality", "thresholds"),
                                            ("conformal", "quantile"), ("retrieval", "knn_k")])
def test_a_section_without_a_required_field_names_both(shipped, section, field):
    broken = json.loads(json.dumps(shipped))
    del broken[section][field]
    with pytest.raises(ModelCardError, match=f"`{section}` section has no `{field}`"):
        card_from_dict(broken)


def test_malformed_values_are_refused(shipped):
    for section, field, value, words in (("referral", "threshold", 5.0, "not a probability"),
                                         ("referral", "threshold", "0.005", "not a float"),
                                         ("triage", "thresholds", {"nv": 0.1}, "malignant classes"),
                                         ("decision_rule", "views", 3, "views 3"),
                                         ("patient_context", "shipped", "yes", "not a bool"),
                                         ("split", "seed", None, "neither a `seed` nor a `file`")):
        broken = json.loads(json.dumps(shipped))
        broken[section][field] = value
        with pytest.raises(ModelCardError, match=words):
            card_from_dict(broken)


def test_no_rule_falls_back_to_a_default_threshold(card_with):
    """The rules take every value from the card: a rule without its threshold cannot even be built (a card without a
    referral section once meant a 0.5 melanoma threshold, 100x the fitted one)."""
    with pytest.raises(TypeError):
        ReferralRule("mel")  # noqa: the missing threshold is the point
    with pytest.raises(TypeError):
        TriageRule({"mel": 0.01}, 0.9, 0.9)  # noqa: no clear margin either
    card = card_with(referral={"score": "mel", "threshold": 0.0123, "target_sensitivity": 0.9},
                     triage={"thresholds": {"mel": 0.0123, "bcc": 0.02}, "target_sensitivity": 0.9,
                             "clear_threshold": 0.9, "clear_margin": 0.5, "out_of_source": {}})
    assert ReferralRule.from_card(card).threshold == 0.0123
    assert TriageRule.from_card(card).thresholds == {"mel": 0.0123, "bcc": 0.02}


def test_the_app_refuses_to_start_on_a_card_without_triage(tmp_path, repo_root, monkeypatch, data_dir):
    from streamlit.testing.v1 import AppTest

    weights = tmp_path / "weights"
    weights.mkdir()
    card = read_card_json(repo_root / "weights")
    del card["triage"]
    (weights / "model_card.json").write_text(json.dumps(card))
    monkeypatch.setenv("LESIONLENS_WEIGHTS", str(weights))
    monkeypatch.setenv("DATA_DIR", str(data_dir))
    at = AppTest.from_file(str(repo_root / "streamlit_app.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("LesionLens cannot start" in e and "has no `triage` section" in e and "calibration.calibrate" in e
               for e in errors), errors
    assert not at.title, "a page rendered on a card without its triage rule"


def test_calibration_never_writes_a_partial_card(tmp_path, repo_root):
    """A single step merges its sections into the card in WEIGHTS (keeping the others'); on a folder whose card would
    then lack a section, nothing is written and the previous card stays as it was."""
    from calibration.card_io import write_sections

    weights = tmp_path / "weights"
    shutil.copytree(repo_root / "weights", weights, ignore=shutil.ignore_patterns("*.safetensors", "*.csv"))
    before = (weights / "model_card.json").read_text()
    card = write_sections(weights, {"referral": {**json.loads(before)["referral"], "threshold": 0.011}})
    assert card.referral.threshold == 0.011 and card.triage.thresholds == json.loads(before)["triage"]["thresholds"]
    written = (weights / "model_card.json").read_text()
    with pytest.raises(ModelCardError, match="Nothing was written"):
        write_sections(weights, {"image_quality": {"checks": {}}})  # a section without its thresholds
    assert (weights / "model_card.json").read_text() == written
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(ModelCardError, match="has no `files` section"):
        write_sections(fresh, {"referral": json.loads(before)["referral"]})
    assert not (fresh / "model_card.json").exists() and not list(fresh.iterdir())
