"""The model card's out-of-source figures (calibration.out_of_source) as the Home page and the Model performance page
show them: how the model and its reliability statements fared on acquisition sources they were fitted without, per
source, per classifier recipe and per skin-tone group."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.acquisition import SOURCE_NAMES
from core.decisions.model_card import ModelCard
from ui.formatting import ci_text, decimals
from ui.metric_views import wrapped_table

RECIPE_NAMES = {
    "mask_cn_head": "head on mask-CN features",
    "mask_cn_head_source_balanced": "head on mask-CN features, source-balanced",
    "imagenet_head": "head on ImageNet features",
    "imagenet_head_source_balanced": "head on ImageNet features, source-balanced",
    "ensemble_source_balanced": "mean of both source-balanced heads",
}
LIGHT_GROUPS = ("very light", "light")


def _pct(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def _pct1(value) -> str:
    """A small share (e.g. the malignant lesions among those not referred) to one decimal."""
    return "—" if value is None else f"{value:.1%}"


def light_skin_share(card: ModelCard) -> tuple[float, int, int] | None:
    """(share of evaluation images with light or very light skin, images of brown or dark skin, images with a known
    group), or None without skin-tone figures."""
    groups = (card.display("out_of_source").get("skin_tone") or {}).get("per_group") or {}
    known = {g: e["images_evaluation"] for g, e in groups.items() if g != "unknown"}
    total = sum(known.values())
    if not total:
        return None
    light = sum(known.get(g, 0) for g in LIGHT_GROUPS)
    return light / total, known.get("brown", 0) + known.get("dark", 0), total


def held_out_summary_ui(card: ModelCard) -> None:
    """Home: what the verdict, the uncertainty levels and the unusual flag did at clinics the model was not trained
    on, and how light the data's skin is."""
    oos = card.display("out_of_source")
    if not oos:
        return
    pooled = oos["rules_pooled"]
    st.markdown("**At clinics the model was not trained on** (each acquisition source held out in turn: "
                f"{', '.join(oos['sources'])})")
    refer, low, unusual = pooled["refer"], pooled["uncertainty"]["low"], pooled["unusual"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Melanomas referred", _pct(refer["melanoma_sensitivity"]["value"]),
              help=f"95% CI {ci_text(refer['melanoma_sensitivity'], _pct)}; all malignant lesions "
                   f"{_pct(refer['malignant_sensitivity'])}, benign lesions referred {_pct(1 - refer['benign_specificity'])}.")
    c2.metric("'Low uncertainty' wrong", _pct(low["error_rate"]),
              help=f"Share of images at the low level: {_pct(low['share'])}.")
    c3.metric("'Unusual' flag: error ratio", "—" if unusual["error_ratio"] is None else f"×{unusual['error_ratio']:.2f}",
              help=f"Flagged images were wrong {_pct(unusual['error_rate_flagged'])} of the time, the others "
                   f"{_pct(unusual['error_rate_rest'])}.")
    c4.metric("90% prediction sets held the truth", _pct(pooled["conformal"]["coverage"]),
              help=f"Mean set size {pooled['conformal']['mean_set_size']:.1f} classes.")
    cleared = pooled["no_referral"]
    st.caption(f"'No referral' was given to {_pct(cleared['share'])} of lesions, of which "
               f"{_pct1(cleared['malignant_share'])} were malignant (95% CI "
               f"{_pct1(cleared['malignant_share_ci95'][0])}-{_pct1(cleared['malignant_share_ci95'][1])}): it is given only to a clear melanocytic nevus with agreeing views and a typical image. "
               f"'Low uncertainty' (which class exactly) is given to only {_pct(low['share'])} of images: fitted so "
               "that it stays right on sources the model was not trained on, it is rare, because at a new clinic the "
               "model cannot tell which of its confident answers to trust.")
    skin = light_skin_share(card)
    if skin is not None:
        light, darker, total = skin
        st.caption(f"Skin tone (individual typology angle of the skin around the lesion): {light:.0%} of the "
                   f"{total:,} evaluation images show light or very light skin and {darker} brown or dark skin. The "
                   "figures above say little about darker skin. Details: Model performance → Out of source.")


def out_of_source_ui(card: ModelCard) -> None:
    """Model performance: the whole out-of-source section of the card."""
    oos = card.display("out_of_source")
    if not oos:
        st.info("The model card has no out-of-source figures: run `bash run.sh calibration.out_of_source`.")
        return
    st.markdown(oos["protocol"][:1].upper() + oos["protocol"][1:])
    st.markdown("**The shipped model per source** (each source's validation + test images, never trained on)")
    wrapped_table(pd.DataFrame([
        {"Source": f"{s} ({SOURCE_NAMES.get(s, s)})", "Images": f["n"], "Melanomas": f["melanomas"],
         "Classes": f["classes_present"], "Melanoma AUC": ci_text(f["melanoma_auc"]),
         "Balanced accuracy": ci_text(f["balanced_accuracy"]), "Macro AUC": decimals(f["macro_auc"])}
        for s, f in oos["shipped_per_source"].items()]))
    st.markdown("**Reliability statements on sources they were fitted without** (the screens quote the pooled row)")
    rows = []
    for s, f in {**oos["rules_per_source"], "pooled": oos["rules_pooled"]}.items():
        rows.append({"Held-out source": s, "Melanomas referred": ci_text(f["refer"]["melanoma_sensitivity"], _pct),
                     "Malignant referred": _pct(f["refer"]["malignant_sensitivity"]),
                     "Benign not referred": _pct(f["refer"]["benign_specificity"]),
                     "No referral: share": _pct(f["no_referral"]["share"]),
                     "No referral: malignant": _pct1(f["no_referral"]["malignant_share"]),
                     "Low: share": _pct(f["uncertainty"]["low"]["share"]),
                     "Low: wrong": _pct(f["uncertainty"]["low"]["error_rate"]),
                     "Unusual: error ratio": f"×{f['unusual']['error_ratio']:.2f}",
                     "Set coverage": _pct(f["conformal"]["coverage"]),
                     "Set size": f"{f['conformal']['mean_set_size']:.2f}"})
    wrapped_table(pd.DataFrame(rows))
    st.caption(f"Settings chosen on these held-out figures: {setting_text(oos['setting'])}.")
    st.markdown("**Classifier recipes, leave one source out** (heads on frozen features fitted without the source: "
                "melanoma AUC / balanced accuracy on it)")
    wrapped_table(pd.DataFrame([
        {"Recipe": RECIPE_NAMES.get(name, name),
         **{s: f"{ci_text(f['melanoma_auc'], lambda v: f'{v:.2f}')} / {ci_text(f['balanced_accuracy'], lambda v: f'{v:.2f}')}"
            for s, f in per.items()}}
        for name, per in oos["recipes_held_out"].items()]))
    skin_ui(oos)
    similar = oos.get("similar_cases") or {}
    if similar:
        pooled = similar["pooled"]
        st.markdown(f"**Similar cases on held-out sources**: of the 8 nearest training images, the share with the "
                    f"query's true diagnosis is {ci_text(pooled['mask_cn_features'], _pct)} in mask-CN's feature space "
                    f"(the classifier's own: its neighbours mostly agree with its prediction, so they are not "
                    f"independent evidence) and {ci_text(pooled['imagenet_features'], _pct)} in the ImageNet "
                    f"features (independent of the classifier).")


def setting_text(setting: dict) -> str:
    """calibration.out_of_source's chosen setting in words."""
    where = {"every_source": "in every fitting source", "pooled": "on the pooled validation images"}
    return (f"referral thresholds for {setting['referral_target']:.0%} sensitivity "
            f"{where[setting.get('referral_fit', 'every_source')]}; 'low' uncertainty by "
            f"{setting['uncertainty_score'].replace('_', ' ')} with <= {setting['low_max_error']:.0%} error "
            f"{where[setting['low_fit']]}; unusual images by {setting['unusual_score'].replace('_', ' ')}"
            f"; the clear-nevus threshold for <= {setting['clear_max_malignant']:.1%} malignant "
            f"{where[setting['clear_fit']]}, every malignant class below {setting['clear_margin']:.0%} of its "
            "referral threshold")


def skin_ui(oos: dict) -> None:
    groups = (oos.get("skin_tone") or {}).get("per_group") or {}
    if not groups:
        return
    st.markdown("**By skin tone** (individual typology angle of the non-lesion skin, Del Bino groups; a proxy "
                "measured on dermoscopy, not a recorded skin type)")
    wrapped_table(pd.DataFrame([
        {"ITA group": g, "Evaluation images": e["images_evaluation"], "Training images": e["images_training"],
         "Balanced accuracy": ci_text(e.get("balanced_accuracy")) if e.get("balanced_accuracy") else "too few",
         "Melanoma AUC": ci_text(e.get("melanoma_auc")) if e.get("melanoma_auc") else "too few",
         "Low: wrong (held out)": _pct(((e.get("held_out_rules") or {}).get("uncertainty") or {}).get("low", {})
                                        .get("error_rate"))}
        for g, e in groups.items()]))
    st.caption("The data is mostly light skin: figures for the darker groups rest on few images or none. Groups with "
               "fewer than 20 evaluation images are not scored.")
