"""Model performance on the two test sets (the lesion-grouped HAM10000 test split and the ISIC 2017 official
validation set), from the model card and weights/test_predictions.csv. The session's melanoma referral threshold is
chosen here (ui.referral); Analyze, Batch and the PDF then apply it."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.decisions.model_card import ModelCard
from core.decisions.referral import BELOW_TEXT, REFER_TEXT, SCORES as REFERRAL_SCORES, validation_sources_text
from ui.analyzers import ModelUnavailable, pool
from ui.audit_log import record_threshold_change
from ui.data_folder import available_sources, current_data_dir
from ui.datasets import dataset_cam, manifest, read_image_path
from ui.figures import (pr_figure, referral_roc_figure, reliability_figure, risk_coverage_figure, roc_figure,
                        segmentation_histograms, training_curves_figure)
from ui.formatting import (MODEL_LABELS, OOD_RESULT_LABELS, SEG_VARIANT_LABELS, cam_caption,
                           ci_text, class_name, context_use_text, decimals, paired_difference_label, pct)
from ui.images import cam_overlay
from ui.metric_views import cell_gallery, ci_metric, confusion_ui, per_class_ui, wrapped_table
from ui.model_files import (TEST_SET_SOURCES, TEST_SETS, classification_of, model_card, predictions_of,
                            test_predictions, test_set_metrics)
from ui.out_of_source import out_of_source_ui
from ui.referral import operating_points, rule, session_threshold, set_session_threshold

DRILL_DOWN_CAM = "Grad-CAM"
PERFORMANCE_TABS = ("Per class", "Confusion", "ROC & PR", "Referral", "Reliability", "Robustness", "Segmentation",
                    "Models")
THRESHOLD_WIDGET = "referral_slider"
# the referral threshold's choices: fine steps where melanoma scores are small, coarser above 0.1
THRESHOLD_GRID = np.round(np.concatenate([np.arange(0.0, 0.1, 0.001), np.arange(0.1, 1.0001, 0.01)]), 3)


def no_predictions_ui(model: str) -> None:
    st.info(f"weights/test_predictions.csv has no per-image predictions of the {MODEL_LABELS.get(model, model)}, so "
            "this view is not available for it.")


# ---------------------------------------------------------------- selection and headline
def selection_ui(card: ModelCard) -> tuple[str, str] | None:
    """The test set and the classifier; None when the card has no classification metrics."""
    sets = [k for k in TEST_SETS if test_set_metrics(card, k).get("classification")]
    if not sets:
        st.warning("The model card has no test classification metrics.")
        return None
    left, right = st.columns([2, 3])
    test_set = left.segmented_control("Test set", sets, default=sets[0], format_func=TEST_SETS.get,
                                      key="perf_test_set", required=True)
    models = [k for k in MODEL_LABELS if k in test_set_metrics(card, test_set)["classification"]]
    # a dropdown: five long names never fit one row of buttons at laptop widths
    model = right.selectbox("Classifier", models, format_func=MODEL_LABELS.get, key="perf_model")
    return test_set, model if model in models else models[0]


def headline_ui(card: ModelCard, test_set: str, model: str) -> None:
    m = classification_of(card, test_set, model)
    ci, referral = m.get("ci", {}), test_set_metrics(card, test_set).get("referral", {})
    cols = st.columns(5)
    ci_metric(cols[0], "Balanced accuracy", ci.get("balanced_accuracy"), pct, "Mean per-class recall, with its "
            "bootstrap 95% CI (lesions resampled).")
    ci_metric(cols[1], "Macro AUC", ci.get("macro_auc"), decimals)
    ci_metric(cols[2], "Melanoma AUC", ci.get("auc_mel"), decimals)
    ci_metric(cols[3], "Referral sensitivity", referral.get("sensitivity"), pct,
            "Melanomas referred by the shipped referral rule at the model card's threshold.")
    ci_metric(cols[4], "Referral specificity", referral.get("specificity"), pct,
            "Other lesions not referred at the model card's threshold.")
    st.caption(f"{MODEL_LABELS.get(model, model)} on {m.get('n', '?')} images of the {TEST_SETS[test_set]}: accuracy "
               f"{pct(m.get('accuracy'))} · top-2 {pct(m.get('top2_accuracy'))} · top-3 {pct(m.get('top3_accuracy'))}."
               " The referral figures are the shipped model's.")


# ---------------------------------------------------------------- confusion drill-down
def cell_images_ui(true: str, pred: str, model: str, test_set: str) -> int:
    """Test images with this true/predicted pair under `model`, with probabilities and CAM; returns how many it showed."""
    preds = predictions_of(model, test_set)
    if preds is None:
        no_predictions_ui(model)
        return 0
    cell = preds[(preds["dx"] == true) & (preds["pred"] == pred)]
    st.markdown(f"**{len(cell)} test image(s): true {class_name(true)}, predicted {class_name(pred)}**")
    if cell.empty:
        return 0
    data_dir = current_data_dir()
    if data_dir is None:
        st.info("Set the data folder in the sidebar to see these images.")
        st.dataframe(cell[["image_id", "dx", "pred", f"p_{pred}"]].head(50), hide_index=True)
        return 0
    c1, c2, _ = st.columns([2, 2, 3], vertical_alignment="bottom")
    show_cam = c1.toggle(f"{DRILL_DOWN_CAM} overlay", value=True, key="cm_cam",
                         help="mask-CN's class activation map for the predicted class.")
    count = c2.slider("Images", 1, 12, 6, key="cm_count")
    try:
        table = manifest(str(data_dir), tuple(available_sources(data_dir)))
    except Exception as exc:
        st.error(f"Cannot read the dataset: {exc}")
        return 0
    paths = dict(zip(zip(table["source"], table["image_id"]), table["image_path"]))
    version = None
    if show_cam:
        try:
            pool().wait()
            version = pool().version
        except ModelUnavailable as exc:
            st.warning(str(exc))
    if version:
        st.caption(f"Maps: {cam_caption(DRILL_DOWN_CAM, pred, masked=False)} (mask-CN's map for every model).")

    def read(row):
        path = paths.get((row.source, row.image_id))
        if path is None:
            return None
        rgb = read_image_path(path)
        return cam_overlay(rgb, dataset_cam(path, pred, DRILL_DOWN_CAM, version)) if version else rgb

    return cell_gallery(cell.sort_values(f"p_{pred}", ascending=False).head(count), true, pred, read)


# ---------------------------------------------------------------- referral
def _threshold_changed() -> None:
    value = float(st.session_state[THRESHOLD_WIDGET])
    set_session_threshold(None if value == rule().threshold else value)
    record_threshold_change()


def _threshold_reset() -> None:
    set_session_threshold(None)
    record_threshold_change()


def threshold_ui() -> float:
    """The session's referral threshold control; returns the threshold in use."""
    card_threshold = rule().threshold
    current = session_threshold()
    current = card_threshold if current is None else current
    options = sorted({*THRESHOLD_GRID.tolist(), card_threshold, current})
    st.session_state[THRESHOLD_WIDGET] = current  # widget state is dropped on page switches; the value is not
    st.select_slider("Your session's referral threshold", options, key=THRESHOLD_WIDGET, on_change=_threshold_changed,
                       format_func=lambda v: f"{v:.3f}" + (" (model card)" if v == card_threshold else ""),
                       help="Applies to Analyze, Batch and the PDF report for the rest of this session.")
    st.button("Use the model card's threshold", key="referral_reset", on_click=_threshold_reset,
              disabled=current == card_threshold, icon=":material/restart_alt:")
    return current


def referral_ui(card: ModelCard) -> None:
    """The referral rule, the session threshold and what it does to sensitivity / specificity on each test set."""
    shipped = rule()
    st.markdown(f"**Rule:** refer when the melanoma score ({REFERRAL_SCORES[shipped.score]}) reaches the "
                f"threshold. The model card's threshold **{shipped.threshold:.3f}** was chosen on validation images for "
                f"a melanoma sensitivity of at least {shipped.target_sensitivity:.0%}"
                f"{validation_sources_text(card.referral.fit)}. "
                f"Analyze, Batch and the PDF report say “{REFER_TEXT}” or “{BELOW_TEXT}”, with the score and the threshold.")
    threshold = threshold_ui()
    if threshold != shipped.threshold:
        st.info(f"Analyze, Batch and the PDF report now use your session's threshold {threshold:.3f} (the model "
                f"card's is {shipped.threshold:.3f}) and say so.", icon=":material/tune:")
    table = test_predictions()
    if table is None or "mel_score" not in table:
        st.info("weights/test_predictions.csv has no melanoma scores: the effect of a threshold cannot be shown.")
        return
    points = operating_points(table, TEST_SETS, TEST_SET_SOURCES, threshold)
    rows = []
    for label, p in points.items():
        card_figures = test_set_metrics(card, p["test_set"]).get("referral", {})
        rows.append({"Test set": label, "Melanomas": p["melanomas"], "Other lesions": p["others"],
                     "Sensitivity": pct(p["sensitivity"]), "Specificity": pct(p["specificity"]),
                     "Referred": pct(p["referred"]),
                     "Card threshold: sensitivity": ci_text(card_figures.get("sensitivity"), pct),
                     "Card threshold: specificity": ci_text(card_figures.get("specificity"), pct)})
    wrapped_table(pd.DataFrame(rows))
    st.caption(f"Sensitivity, specificity and share referred at {threshold:.3f}, computed from the test predictions; "
               "the last two columns: the model card's figures at its own threshold, with bootstrap 95% CIs.")
    st.plotly_chart(referral_roc_figure(points, threshold), key="referral_chart")


# ---------------------------------------------------------------- uncertainty, calibration, OOD, retrieval
def uncertainty_ui(card: ModelCard, test_set: str) -> None:
    entry = card.uncertainty
    st.markdown(f"Each analysis says its uncertainty in words: **low / moderate / high**, from the "
                f"`{entry.score}` score cut on validation images; the screens give each level's "
                "measured validation error rate. Risk-coverage: keep the most certain images first.")
    curves = {label: test_set_metrics(card, key).get("uncertainty", {}).get("risk_coverage")
              for key, label in TEST_SETS.items()}
    st.plotly_chart(risk_coverage_figure({k: v for k, v in curves.items() if v}), key="risk_coverage_chart")
    levels = test_set_metrics(card, test_set).get("uncertainty", {}).get("levels", {})
    validation = entry.error_rates
    st.dataframe(pd.DataFrame([{"Level": level, "Share of images": pct(v.get("share")), "Images": v.get("n"),
                                "Top-1 error rate (95% CI)": ci_text(v.get("error_rate"), pct),
                                "Validation error rate": pct(validation.get(level))} for level, v in levels.items()]),
                 hide_index=True, key="uncertainty_table")
    st.caption(f"Levels on the {TEST_SETS[test_set]}; the validation error rate is what the screens quote.")


def calibration_ui(card: ModelCard, m: dict, model: str) -> None:
    cal = m.get("calibration", {})
    if not cal:
        st.info("No calibration data in the model card.")
        return
    st.plotly_chart(reliability_figure(cal), key="calibration_chart")
    rule_entry = card.decision_rule
    if model == "mask_cn":
        chosen = rule_entry.fit.get("chosen", {})
        st.caption(f"Plain softmax: one view, no temperature. Shown: the decision rule ({rule_entry.views} "
                   f"test-time view(s), logit adjustment tau {float(chosen.get('tau', 0)):.2f}, temperature "
                   f"T = {rule_entry.temperature:.2f}; validation ECE "
                   f"{decimals(chosen.get('ece'))}), fitted on validation only. Rule: "
                   f"{rule_entry.fit.get('rule', '—')}. Bars: accuracy per confidence bin; dots: the bin's "
                   "mean confidence (on the diagonal when calibrated).")


def ood_ui(card: ModelCard) -> None:
    ood = card.ood
    if not ood.results:
        st.info("No out-of-distribution results in the model card.")
        return
    st.markdown("**not dermoscopy** → no diagnosis is shown at all; **unusual** → the diagnosis is shown greyed with "
                "a warning.")
    rows = [{"Images": OOD_RESULT_LABELS.get(name, name), "n": entry.get("n", test_set_metrics(card, name).get("n_images")),
             "Rejected as not dermoscopy": pct(entry.get("not_dermoscopy_share")),
             "Flagged unusual": pct(entry.get("unusual_share")),
             "Error rate, unusual": pct(entry.get("error_rate_unusual")),
             "Error rate, in distribution": pct(entry.get("error_rate_in"))}
            for name, entry in ood.results.items()]
    wrapped_table(pd.DataFrame(rows).fillna("—"))
    accepted = [f"{OOD_RESULT_LABELS.get(name, name)}: {', '.join(entry['accepted'])}"
                for name, entry in ood.results.items() if entry.get("accepted")]
    if accepted:
        st.caption("Not rejected (a diagnosis is shown for them): " + "; ".join(accepted))
    st.caption(f"Method: {ood.method or '—'}")


def retrieval_ui(card: ModelCard) -> None:
    k = card.retrieval.k
    rows = [{"Queries": label, f"Precision@{k}": decimals(r.get("precision_at_k")),
             "k-NN vote balanced accuracy": pct(r.get("knn_vote_balanced_accuracy")),
             "Classifier balanced accuracy": pct(classification_of(card, key).get("balanced_accuracy"))}
            for key, label in TEST_SETS.items() if (r := test_set_metrics(card, key).get("retrieval"))]
    if not rows:
        st.info("No similar-case figures in the model card.")
        return
    st.markdown(f"Analyze shows the {k} reference cases nearest to an image in mask-CN's feature space "
                f"({card.retrieval.reference_set or 'the reference set'}). Precision@{k}: share of "
                "them with the query's diagnosis; a majority vote of them, against the classifier itself:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="retrieval_table")


# ---------------------------------------------------------------- segmentation, models, training
def segmentation_ui(card: ModelCard, test_set: str) -> None:
    seg = test_set_metrics(card, test_set).get("segmentation", {})
    variants = {k: v for k, v in seg.items() if k != "paired_differences"}
    if not variants:
        st.info("No segmentation metrics in the model card.")
        return
    rows = [{"Network": SEG_VARIANT_LABELS.get(key, key), "Dice": ci_text(v.get("dice")),
             "Jaccard": ci_text(v.get("jaccard")),
             "Thresholded Jaccard (0.65)": ci_text(v.get("jaccard_thresholded_065")), "Images": v.get("n")}
            for key, v in variants.items()]
    wrapped_table(pd.DataFrame(rows))
    differences = seg.get("paired_differences", {})
    if differences:
        st.markdown("**Paired differences** (same images; positive favours enhanced-SN)")
        st.dataframe(pd.DataFrame([{"Comparison": paired_difference_label(name), "Mean difference": ci_text(v)}
                                   for name, v in differences.items()]), hide_index=True, key="seg_differences")
    st.plotly_chart(segmentation_histograms(seg), key="dice_chart")


def models_ui(card: ModelCard, test_set: str) -> None:
    """The classification models on this test set, resolution consistency and the patient-context comparison."""
    cls = test_set_metrics(card, test_set).get("classification", {})
    rows = [{"Model": MODEL_LABELS.get(key, key), "Balanced accuracy": ci_text(m.get("ci", {}).get("balanced_accuracy")),
             "Macro AUC": ci_text(m.get("ci", {}).get("macro_auc")),
             "Melanoma AUC": ci_text(m.get("ci", {}).get("auc_mel")), "Accuracy": decimals(m.get("accuracy")),
             "ECE plain softmax": decimals(m.get("calibration", {}).get("before", {}).get("ece")),
             "ECE shown": decimals(m.get("calibration", {}).get("after", {}).get("ece"))}
            for key, m in cls.items()]
    st.markdown(f"**Classification models on the {TEST_SETS[test_set]}** (bootstrap 95% CIs)")
    wrapped_table(pd.DataFrame(rows))
    res = card.display("resolution_consistency")
    if res.get("n"):
        st.markdown(f"**Resolution consistency:** the top class changes on {pct(res.get('top_class_changed_share'))} "
                    f"of {res['n']} full-resolution HAM10000 images against their 200×150 copies (mean probability "
                    f"change {pct(res.get('mean_abs_probability_change'))}).")
    context = card.patient_context.entry
    if context.get("validation_criterion"):
        criterion = context["validation_criterion"]
        st.markdown("**Patient context** (age, sex, anatomical site): " + context_use_text(card, where=""))
        loss, ece = context.get("validation_log_loss") or {}, context.get("validation_ece") or {}
        st.dataframe(pd.DataFrame([{"Inputs": "image only", "Validation criterion": decimals(criterion.get("image_only")),
                                    "Validation log-loss": decimals(loss.get("image_only")),
                                    "Validation ECE": decimals(ece.get("image_only"))},
                                   {"Inputs": "image + age, sex, site",
                                    "Validation criterion": decimals(criterion.get("image_and_context")),
                                    "Validation log-loss": decimals(loss.get("image_and_context")),
                                    "Validation ECE": decimals(ece.get("image_and_context"))},
                                   {"Inputs": "gain", "Validation criterion": ci_text(
                                       {"value": context.get("gain"), "ci95": context.get("gain_ci95")}),
                                    "Validation log-loss": "", "Validation ECE": ""}]),
                     hide_index=True, key="context_table")
        if context.get("method"):
            st.caption(context["method"])


def training_ui(card: ModelCard) -> None:
    curves = card.display("training_curves")
    if curves:
        st.plotly_chart(training_curves_figure(curves), key="training_chart")
        st.caption("Validation metric: Dice for the segmenters, balanced accuracy for the classifiers.")
    else:
        st.info("The model card has no training curves.")
    times = card.display("training_time_minutes")
    if times:
        # every run, without a scroll bar (the default height shows ten rows)
        st.dataframe(pd.DataFrame([{"Stage": stage, **t} for stage, t in times.items()]), hide_index=True,
                     key="training_table", height="content")


def performance_page() -> None:
    st.title("Model performance")
    card = model_card()
    selection = selection_ui(card)
    if selection is None:
        return
    test_set, model = selection
    st.caption(f"Model {card.version} · {card.display('data').get('test', TEST_SETS[test_set])}")
    headline_ui(card, test_set, model)
    m = classification_of(card, test_set, model)
    # Eight short labels fit one row at laptop widths: twelve hid the last ones behind a scroll arrow.
    tabs = st.tabs(PERFORMANCE_TABS)
    with tabs[0]:
        per_class_ui(m, "per_class_table")
    with tabs[1]:
        cell = confusion_ui(m, "cm")
        if cell:
            cell_images_ui(*cell, model, test_set)
    with tabs[2]:
        left, right = st.columns(2)
        left.plotly_chart(roc_figure(m), key="roc_chart")
        right.plotly_chart(pr_figure(m), key="pr_chart")
    with tabs[3]:
        referral_ui(card)
    with tabs[4]:
        st.subheader("Uncertainty")
        uncertainty_ui(card, test_set)
        st.subheader("Calibration")
        calibration_ui(card, m, model)
    with tabs[5]:
        st.subheader("Out of distribution")
        ood_ui(card)
        st.subheader("Out of source")
        out_of_source_ui(card)
    with tabs[6]:
        segmentation_ui(card, test_set)
    with tabs[7]:
        models_ui(card, test_set)
        st.subheader("Similar cases")
        retrieval_ui(card)
        st.subheader("Training")
        training_ui(card)

performance_page()
