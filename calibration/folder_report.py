"""`python -m calibration.evaluate --data-dir DIR --report OUT/`: the shipped model (WEIGHTS) on every labelled image of
DIR through core.analysis.folder_evaluation (the code behind the dashboard's "Evaluate your data" page); OUT/ gets
report.json, predictions.csv, failures.csv and a self-contained report.html.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from core.data.classes import CLASS_CODES
from core.data.datasets import load_manifest


def folder_report(data_dir: Path, weights: Path, out: Path) -> dict:
    from tqdm import tqdm

    from core.analysis.folder_evaluation import evaluate_folder
    from core.analysis.inference import Analyzer

    manifest = load_manifest(data_dir)
    analyzer = Analyzer.load(weights)
    with tqdm(total=len(manifest), desc="evaluating", unit="image") as bar:
        evaluation = evaluate_folder(analyzer, manifest, on_progress=lambda done, total: bar.update(1))
    out.mkdir(parents=True, exist_ok=True)
    evaluation.predictions.to_csv(out / "predictions.csv", index=False)
    pd.DataFrame(evaluation.failures, columns=["image_id", "error"]).to_csv(out / "failures.csv", index=False)
    (out / "report.json").write_text(json.dumps(evaluation.summary, indent=1))
    (out / "report.html").write_text(report_html(evaluation.summary, data_dir))
    ci = evaluation.summary.get("classification", {}).get("ci", {})
    print(f"{evaluation.summary['n_images']} images evaluated, {evaluation.summary['n_not_dermoscopy']} given no "
          f"automated assessment, {evaluation.summary['n_failed']} failed -> {out}")
    for name, entry in ci.items():
        print(f"  {name:<20} {entry['value']:.4f}  [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]")
    return evaluation.summary


def report_html(summary: dict, data_dir: Path) -> str:
    """A self-contained HTML summary of a folder evaluation (tables only, no scripts)."""
    import html

    parts = [f"<h1>LesionLens evaluation: {html.escape(str(data_dir))}</h1>",
             f"<p>Model {html.escape(str(summary.get('model_version')))}; {summary['n_images']} images evaluated, "
             f"{summary['n_failed']} failed, {summary['n_not_dermoscopy']} given no automated assessment (not "
             f"dermoscopy: listed below, out of the figures){', run cancelled' if summary.get('cancelled') else ''}.</p>"]
    cls = summary.get("classification")
    if cls:
        rows = [{"figure": k, "value": v["value"], "95% CI": f"{v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}"
                 if v["ci95"][0] is not None else ""} for k, v in cls["ci"].items()]
        parts += ["<h2>Headline</h2>", pd.DataFrame(rows).to_html(index=False, float_format="%.3f"),
                  "<h2>Per class</h2>", pd.DataFrame(cls["per_class"]).T.to_html(float_format="%.3f"),
                  "<h2>Confusion matrix (rows: truth, columns: prediction)</h2>",
                  pd.DataFrame(cls["confusion_matrix"], index=CLASS_CODES, columns=CLASS_CODES).to_html(),
                  f"<h2>Melanoma referral</h2><p>{html.escape(json.dumps(summary['referral']))}</p>",
                  f"<p>Expected calibration error: {cls['calibration']['ece']:.3f}</p>"]
    if summary.get("segmentation"):
        seg = summary["segmentation"]
        parts.append(f"<h2>Segmentation</h2><p>Dice {seg['dice']['value']:.3f}, Jaccard {seg['jaccard']['value']:.3f} "
                     f"over {seg['n']} images with masks</p>")
    if summary.get("refused"):
        parts += [f"<h2>No automated assessment: review these lesions yourself ({len(summary['refused'])})</h2>",
                  pd.DataFrame(summary["refused"]).to_html(index=False)]
    return "<!doctype html><meta charset='utf-8'><title>LesionLens evaluation</title>" + "\n".join(parts)
