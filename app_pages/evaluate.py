"""Evaluate your data: the shipped model on a researcher's own labelled folder (any layout core.data.datasets reads), with
the figures `python -m calibration.evaluate --data-dir DIR --report OUT` writes (core.analysis.folder_evaluation).

The images are analysed a few per script run (the partial state lives in st.session_state and the page reruns until
done), so the progress bar moves and the Cancel button answers between chunks; a cancelled run is reported with the
images done so far. One bad file becomes a failure row and the run goes on."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data.datasets import LAYOUTS_TEXT
from ui.analyzers import ModelUnavailable, pool
from ui.batch_result_view import evaluation_result_ui
from ui.data_folder import resolve_data_dir
from ui.datasets import read_image_path
from ui.figures import reliability_figure, roc_figure
from ui.formatting import DISCLAIMER, ci_text, class_name, decimals, pct
from ui.metric_views import cell_gallery, ci_metric, confusion_ui, per_class_ui

RUN = "folder_run"   # session state: {folder, manifest, rows, failures, done, cancel, evaluation}
CHUNK = 4            # images per script run: the Cancel button answers within one chunk


def _cancel() -> None:
    st.session_state[RUN]["cancel"] = True


def start_ui() -> None:
    """The folder box and the Evaluate button; a readable folder starts a new run."""
    running = RUN in st.session_state and st.session_state[RUN]["evaluation"] is None
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    value = left.text_input("Folder with your labelled images (on the server)", key="eval_folder",
                            placeholder="/data/my_lesions", help=f"Any of: {LAYOUTS_TEXT}.")
    if not right.button("Evaluate", key="eval_start", type="primary", disabled=running or not value.strip()):
        return
    from core.data.datasets import load_manifest

    folder = resolve_data_dir(value)
    if folder is None:
        st.error(f"`{value}` is not a folder on the server.")
        return
    try:
        table = load_manifest(folder)
    except (ValueError, OSError) as exc:  # core.data.datasets.DatasetError names the file and row
        st.error(f"Cannot read the folder: {exc}")
        return
    st.session_state[RUN] = {"folder": str(folder), "manifest": table, "rows": [], "failures": [], "done": 0,
                             "cancel": False, "evaluation": None}


def progress_ui(run: dict) -> None:
    """One chunk of images, then a rerun (until done or cancelled)."""
    from core.analysis.folder_evaluation import assemble, predict_rows

    total = len(run["manifest"])
    st.progress(run["done"] / total, text=f"Evaluating `{run['folder']}`: {run['done']} of {total} images")
    st.button("Cancel", key="eval_cancel", on_click=_cancel, icon=":material/stop:")
    try:
        with pool().borrow() as analyzer:
            version = analyzer.card.model_version
            if not run["cancel"]:
                rows, failures, _ = predict_rows(analyzer, run["manifest"].iloc[run["done"]:run["done"] + CHUNK])
                run["rows"] += rows
                run["failures"] += failures
                run["done"] = min(total, run["done"] + CHUNK)
    except ModelUnavailable as exc:
        st.error(str(exc))
        del st.session_state[RUN]
        return
    if run["cancel"] or run["done"] >= total:
        run["evaluation"] = assemble(run["rows"], run["failures"], run["cancel"], version)
    st.rerun()


def summary_ui(summary: dict, total: int) -> None:
    if summary["cancelled"]:
        done = summary["n_images"] + summary["n_not_dermoscopy"] + summary["n_failed"]
        st.warning(f"**Cancelled.** The figures below cover the {done} of {total} images done before the cancel.",
                   icon=":material/stop_circle:")
    cls = summary.get("classification") or {}
    referral = summary.get("referral") or {}
    cols = st.columns(5)
    cols[0].metric("Images evaluated", summary["n_images"],
                   help="Images given a diagnosis: the figures are computed on these only.")
    cols[1].metric("Failed", summary["n_failed"], help="Files that could not be read or analysed (listed below).")
    cols[2].metric("No automated assessment", summary["n_not_dermoscopy"],
                   help="Not dermoscopy (clinical photo, not skin): no diagnosis, so out of the figures; listed under "
                        "'No automated assessment'. A refused image is not a benign one: review these lesions yourself.")
    ci_metric(cols[3], "Balanced accuracy", cls.get("ci", {}).get("balanced_accuracy"), pct,
              "Mean recall over the classes present, bootstrap 95% CI (lesions resampled).")
    ci_metric(cols[4], "Macro AUC", cls.get("ci", {}).get("macro_auc"), decimals)
    st.caption(f"Melanoma referral at the model card's threshold: sensitivity {pct(referral.get('sensitivity'))} "
               f"({referral.get('n_melanoma', 0)} melanomas), specificity {pct(referral.get('specificity'))}"
               f"{refused_melanoma_text(summary.get('n_melanoma_refused', 0))}. Model "
               f"{summary.get('model_version')}; the same figures as `python -m calibration.evaluate --data-dir FOLDER "
               "--report OUT`.")


def refused_melanoma_text(n: int) -> str:
    return f"; {n} melanoma(s) given no automated assessment are not in these figures" if n else ""


def refused_ui(summary: dict) -> None:
    """The images given no automated assessment, with their true label and the reason."""
    refused = summary.get("refused") or []
    if not refused:
        st.success("Every image was judged dermoscopy and assessed.")
        return
    st.warning(f"**No automated assessment: review these lesions yourself.** {len(refused)} image(s) were judged not "
               "dermoscopy, so they have no diagnosis and are not in the figures above; a refused image is not a "
               "benign one.", icon=":material/block:")
    st.dataframe(pd.DataFrame(refused).rename(columns={"image_id": "Image", "dx": "True label", "ood_level": "Judged",
                                                      "reason": "Why"}),
                 hide_index=True, key="eval_refused")


def drill_down_ui(evaluation, paths: dict, true: str, pred: str) -> None:
    rows = evaluation.predictions
    cell = rows[(rows["dx"] == true) & (rows["pred"] == pred)]
    st.markdown(f"**{len(cell)} image(s): true {class_name(true)}, predicted {class_name(pred)}**")
    if cell.empty:
        return
    count = st.slider("Images", 1, 12, 6, key="eval_count")

    def read(row):
        return read_image_path(paths[row.image_id]) if row.image_id in paths else None

    cell_gallery(cell.sort_values(f"p_{pred}", ascending=False).head(count), true, pred, read)


def segmentation_ui(summary: dict) -> None:
    seg = summary.get("segmentation")
    if not seg:
        st.info("No lesion masks in the folder: no segmentation figures.")
        return
    st.dataframe(pd.DataFrame([{"Images with a mask": seg["n"], "Dice": ci_text(seg["dice"]),
                                "Jaccard": ci_text(seg["jaccard"])}]), hide_index=True, key="eval_seg_table")


def report_ui(run: dict) -> None:
    evaluation = run["evaluation"]
    summary = evaluation.summary
    summary_ui(summary, len(run["manifest"]))
    cls = summary.get("classification")
    tabs = st.tabs(["Per class", "Confusion matrix", "ROC", "Reliability", "Segmentation",
                    f"Failures ({len(evaluation.failures)})",
                    f"No automated assessment ({summary['n_not_dermoscopy']})", "Predictions"])
    if cls:
        with tabs[0]:
            per_class_ui(cls, "eval_per_class")
        with tabs[1]:
            cell = confusion_ui(cls, "eval_cm")
            if cell:
                drill_down_ui(evaluation, dict(zip(run["manifest"]["image_id"], run["manifest"]["image_path"])), *cell)
        with tabs[2]:
            st.plotly_chart(roc_figure(cls), key="eval_roc_chart")
        with tabs[3]:
            st.plotly_chart(reliability_figure({"after": cls["calibration"]}), key="eval_calibration_chart")
    else:
        tabs[0].info("No image got a diagnosis: nothing to score.")
    with tabs[4]:
        segmentation_ui(summary)
    with tabs[5]:
        if evaluation.failures:
            st.dataframe(pd.DataFrame(evaluation.failures, columns=["image_id", "error"]), hide_index=True,
                         key="eval_failures")
        else:
            st.success("Every file was read and analysed.")
    with tabs[6]:
        refused_ui(summary)
    with tabs[7]:
        st.download_button("Download predictions (CSV)", evaluation.predictions.to_csv(index=False).encode("utf-8"),
                           file_name="lesionlens_evaluation.csv", mime="text/csv", key="eval_csv", type="primary",
                           icon=":material/download:")
        st.dataframe(evaluation.predictions, hide_index=True, key="eval_predictions")


def evaluate_page() -> None:
    st.title("Evaluate your data")
    st.caption(DISCLAIMER)
    st.markdown("Run the shipped model on your own labelled dermoscopic images and get its figures with 95% "
                f"confidence intervals. The folder may be {LAYOUTS_TEXT}. Nothing is written to it.")
    start_ui()
    with st.expander("Or open an archive result (`run.sh batch` Parquet output) with its labels",
                     icon=":material/folder_open:"):
        opened = evaluation_result_ui()  # ui.batch_result_view: the same report, nothing re-analysed
    if opened is not None:
        st.session_state[RUN] = opened
    run = st.session_state.get(RUN)
    if run is None:
        return
    if run["evaluation"] is None:
        progress_ui(run)
    else:
        report_ui(run)


evaluate_page()
