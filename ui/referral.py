"""The melanoma referral as every screen shows it: the model card's rule (core.decisions.referral) at the card's threshold, or
at the session's own threshold chosen on the Model performance page; and the triage verdict (core.decisions.triage) built on it.
Analyze, Batch and the PDF read the threshold and the verdict here, so they always agree with each other and say
whose threshold it is."""
from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from core.analysis.metrics import sensitivity_specificity_at
from core.data.classes import CLASS_CODES
from core.decisions.image_quality import CHECK_KINDS
from core.decisions.referral import BELOW_TEXT, REFER_TEXT, ReferralRule
from core.decisions.triage import TriageRule, Verdict
from ui.model_files import model_card, test_predictions

SESSION_THRESHOLD = "referral_threshold"  # plain session state: survives page switches; None / absent = the card's


@dataclass(frozen=True)
class Referral:
    refer: bool
    score: float            # the rule's melanoma score of the image
    threshold: float        # the threshold applied
    card_threshold: float

    @property
    def session(self) -> bool:
        """True when the session's own threshold was applied."""
        return self.threshold != self.card_threshold

    @property
    def text(self) -> str:
        return REFER_TEXT if self.refer else BELOW_TEXT

    @property
    def numbers(self) -> str:
        """'Melanoma score 0.153; referral threshold 0.021', with as many decimals as it takes to tell them apart."""
        digits = next((d for d in range(3, 7) if f"{self.score:.{d}f}" != f"{self.threshold:.{d}f}"), 6)
        return f"Melanoma score {self.score:.{digits}f}; referral threshold {self.threshold:.{digits}f}"

    @property
    def threshold_note(self) -> str:
        """Whose threshold it is: "your session's threshold 0.300; the model card's is 0.021" or "the model card's"."""
        if self.session:
            return (f"your session's threshold {threshold_text(self.threshold)}; the model card's is "
                    f"{threshold_text(self.card_threshold)}")
        return "the model card's threshold, chosen on validation images"


def threshold_text(threshold: float) -> str:
    """A referral threshold as every surface writes it (screens, PDF, Batch CSV): three decimals."""
    return f"{threshold:.3f}"


def rule() -> ReferralRule:
    """The shipped model's referral rule (score and card threshold)."""
    return ReferralRule.from_card(model_card())


def session_threshold() -> float | None:
    """The threshold this session chose on Model performance, or None (the card's)."""
    value = st.session_state.get(SESSION_THRESHOLD)
    return None if value is None else float(value)


def set_session_threshold(value: float | None) -> None:
    """Use `value` for this session's referrals (None: back to the card's)."""
    st.session_state[SESSION_THRESHOLD] = value


def referral_of(result, threshold: float | None = None) -> Referral:
    """The referral of a core.analysis.inference.AnalysisResult at `threshold` (default: the session's, else the card's)."""
    threshold = session_threshold() if threshold is None else threshold
    if threshold is None or threshold == result.referral_threshold:
        return Referral(bool(result.refer), result.mel_score, result.referral_threshold, result.referral_threshold)
    refer = bool(rule().refer([result.probs[c] for c in CLASS_CODES], threshold))
    return Referral(refer, result.mel_score, float(threshold), result.referral_threshold)


def verdict_of(result) -> Verdict:
    """The triage verdict of a core.analysis.inference.AnalysisResult with the session's melanoma threshold (the card's
    verdict, result.triage, when the session has none), quoting the operating point of the threshold in use."""
    threshold = session_threshold()
    if (threshold is None or threshold == result.referral_threshold) and result.triage is not None:
        return result.triage
    verdict = TriageRule.from_card(model_card()).verdict(
        [result.probs[c] for c in CLASS_CODES], result.uncertainty_level, result.ood_level, result.ood_reason,
        tuple(CHECK_KINDS[name].phrase for name in result.quality), mel_threshold=threshold,
        view_probs=result.view_probs)
    if verdict.level == "not_assessed" or threshold is None:
        return verdict
    return replace(verdict, evidence=session_operating_point(threshold))


def session_operating_point(threshold: float) -> str:
    """What the melanoma rule does at the session's `threshold`, measured on the test predictions (the only images
    scored at every threshold; the held-out figures hold for the card's thresholds alone)."""
    table = test_predictions()
    if table is None or "mel_score" not in table:
        return (f"No figures exist for your session's melanoma threshold {threshold_text(threshold)}: the held-out "
                "figures hold for the model card's thresholds only.")
    score, is_mel = table["mel_score"].to_numpy(dtype=float), (table["dx"] == "mel").to_numpy()
    sensitivity, specificity = sensitivity_specificity_at(score, is_mel, threshold)
    return (f"At your session's melanoma threshold {threshold_text(threshold)}, the melanoma rule referred "
            f"{sensitivity:.0%} of the melanomas and {1 - specificity:.0%} of the other lesions of the test images "
            f"(clinics the model was trained on; the held-out figures hold for the model card's thresholds only).")


def operating_points(table, test_sets: dict[str, str], sources: dict[str, str], threshold: float) -> dict[str, dict]:
    """Per test set (label -> ...) of the test predictions: melanoma / other counts, sensitivity, specificity and
    share referred at `threshold`, and the ROC curve of the melanoma score (Model performance, referral tab)."""
    from sklearn.metrics import roc_curve

    points = {}
    for test_set, label in test_sets.items():
        part = table[table["source"] == sources[test_set]]
        if part.empty:
            continue
        is_mel, score = (part["dx"] == "mel").to_numpy(), part["mel_score"].to_numpy(dtype=float)
        sens, spec = sensitivity_specificity_at(score, is_mel, threshold)
        fpr, tpr, _ = roc_curve(is_mel, score)
        points[label] = {"test_set": test_set, "melanomas": int(is_mel.sum()), "others": int((~is_mel).sum()),
                         "sensitivity": sens, "specificity": spec, "referred": float((score >= threshold).mean()),
                         "fpr": fpr, "tpr": tpr}
    return points


def refused_ui(parent, result) -> None:
    """The verdict of an image that is not dermoscopy, in `parent` (a Streamlit container): no automated assessment,
    why, and that a refusal is no reassurance (Analyze, PACS)."""
    verdict = verdict_of(result)
    parent.error(f"**{verdict.headline}.** {verdict.because}", icon=":material/block:")
