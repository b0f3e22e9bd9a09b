"""UI-only helpers shared by the LesionLens dashboard pages (streamlit_app.py and pages/*).

Everything here is presentation: where the data folder is, cached loaders around core functions, image
encoding for display/download, and plotly figure styling. No model, metric or measurement code lives here;
that is all in core/ (core.inference, core.metrics, core.lesion_measurements, core.cam, core.report).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.classes import CLASS_BY_CODE, CLASS_CODES, CLASSES, MALIGNANT_CODES

REPO_ROOT = Path(__file__).resolve().parent
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"
UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"]
DATA_DIR_KEY = "data_dir"            # the value every page reads (plain session state, survives page switches)
DATA_DIR_WIDGET = "data_dir_input"  # the sidebar text box (widget state is dropped on page switches)
SOURCE_LABELS = {"ham10000": "HAM10000", "isic2017": "ISIC 2017"}
MODEL_LABELS = {"mask_cn": "mask-CN (image + lesion mask)", "classifier": "Image-only classifier"}
SEG_LABELS = {"coarse_sn": "coarse-SN", "enhanced_sn": "enhanced-SN"}
MASK_COLOUR = (0, 230, 118)  # green contour/fill: visible on pink/brown skin, not a class colour
MALIGNANT_MARK = "▲"

DISCLAIMER = (
    "**Decision support for health-care professionals — not a diagnosis.** LesionLens estimates class "
    "probabilities for a dermoscopic image from a research model trained on public data (HAM10000). It can be "
    "wrong, is not a medical device, and must never replace clinical examination, dermoscopy by a trained "
    "clinician or histopathology. Do not upload identifiable patient information."
)


# ---------------------------------------------------------------- paths and settings
def weights_dir() -> Path:
    return Path(os.environ.get("LESIONLENS_WEIGHTS") or DEFAULT_WEIGHTS_DIR)


def default_data_dir() -> str:
    """DATA_DIR from the environment, else st.secrets["DATA_DIR"], else ""."""
    value = os.environ.get("DATA_DIR", "").strip()
    if value:
        return value
    try:
        secret = st.secrets.get("DATA_DIR", "")
    except Exception:  # no secrets.toml: streamlit raises; that just means "not set"
        secret = ""
    return str(secret or "").strip()


def resolve_data_dir(value: str | None) -> Path | None:
    """A user-entered folder -> an existing absolute folder holding a dataset, or None."""
    value = (value or "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = path if path.exists() else REPO_ROOT / path
    path = path.resolve()
    return path if path.is_dir() else None


def data_dir_sidebar() -> Path | None:
    """The sidebar DATA_DIR box (rendered once by the entry point, state shared by every page)."""
    if DATA_DIR_KEY not in st.session_state:
        st.session_state[DATA_DIR_KEY] = default_data_dir()
    st.session_state[DATA_DIR_WIDGET] = st.session_state[DATA_DIR_KEY]

    def _changed() -> None:
        st.session_state[DATA_DIR_KEY] = st.session_state[DATA_DIR_WIDGET]

    with st.sidebar:
        st.text_input(
            "Data folder (DATA_DIR)",
            key=DATA_DIR_WIDGET, on_change=_changed,
            placeholder="e.g. ../shared/data",
            help="Folder holding ham10000/ and/or isic2017/ (see README). Needed for dataset examples, the "
                 "explorer and test images; the model itself does not need it. Set it with the DATA_DIR "
                 "environment variable, st.secrets['DATA_DIR'] or here.",
        )
        path = current_data_dir()
        if path is not None:
            found = [SOURCE_LABELS[s] for s in SOURCE_LABELS if (path / s).is_dir()]
            st.caption(f"Dataset: {', '.join(found) or 'custom layout'} in `{path}`")
        elif st.session_state.get(DATA_DIR_KEY, "").strip():
            st.warning("That folder does not exist.")
        else:
            st.caption("No data folder set: upload images to analyse them.")
    return path


def current_data_dir() -> Path | None:
    value = st.session_state.get(DATA_DIR_KEY)
    if value is None:  # page run without the entry point (should not happen in the app)
        value = default_data_dir()
    return resolve_data_dir(value)


def device_text() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU ({torch.cuda.get_device_name(0)})"
    return f"CPU ({os.cpu_count()} cores, torch {torch.__version__})"


# ---------------------------------------------------------------- cached loaders
def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(show_spinner=False)
def _read_card(directory: str, _stamp: float) -> dict:
    from core.weights_io import read_model_card

    return read_model_card(directory)


def model_card() -> dict | None:
    """The shipped model card, or None when weights/ has none yet (re-read when the file changes)."""
    directory = weights_dir()
    card_path = directory / "model_card.json"
    if not card_path.is_file():
        return None
    return _read_card(str(directory), _mtime(card_path))


@st.cache_resource(show_spinner="Loading the model…", max_entries=1)
def _load_analyzer(directory: str, _stamp: float):
    import torch

    from core.inference import Analyzer

    # One torch thread per analysis in the server (LESIONLENS_TORCH_THREADS overrides): the shared Analyzer runs one
    # analysis at a time anyway, and with several sessions the other cores are busy with their reruns (PDF, plots,
    # image encoding); an OpenMP team of 2 on a 2-core machine that is not idle stalls at every barrier (measured:
    # analyze + Grad-CAM p50 3.2 s with 2 threads vs 0.31 s with 1 on this machine under load).
    threads = int(os.environ.get("LESIONLENS_TORCH_THREADS", "1") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return Analyzer.load(directory)


def analyzer():
    """The shared Analyzer (loaded once per weights version). Raises WeightsIntegrityError / OSError."""
    directory = weights_dir()
    return _load_analyzer(str(directory), _mtime(directory / "model_card.json"))


def analyzer_or_error():
    """(analyzer, None) or (None, message) — pages show the message instead of crashing."""
    try:
        return analyzer(), None
    except Exception as exc:  # WeightsIntegrityError, missing files, import problems
        return None, f"The model could not be loaded from `{weights_dir()}`: {exc}"


@st.cache_data(show_spinner="Reading the dataset…", max_entries=4)
def manifest(data_dir: str, sources: tuple[str, ...]) -> pd.DataFrame:
    """core.datasets.load_manifest (no split; see split_manifest)."""
    from core.datasets import load_manifest

    return load_manifest(data_dir, sources=sources)


@st.cache_data(show_spinner="Computing the lesion-grouped split…", max_entries=4)
def split_manifest(data_dir: str, sources: tuple[str, ...]) -> pd.DataFrame:
    """The manifest with the training split: the split file the model card names if present, else
    core.datasets.assign_splits with seed 42 (what training uses by default; ISIC 2017 keeps its official split)."""
    from core.splits import apply_split_file, assign_splits

    table = manifest(data_dir, sources)
    split = (model_card() or {}).get("split") or {}
    split_file = split.get("file") if isinstance(split, dict) else None
    if split_file and Path(split_file).is_file():
        try:
            return apply_split_file(table, split_file)
        except Exception:
            pass
    return assign_splits(table, seed=42)


def available_sources(data_dir: Path) -> list[str]:
    return [s for s in SOURCE_LABELS if (data_dir / s).is_dir()]


@st.cache_data(show_spinner=False)
def _read_predictions(path: str, _stamp: float) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str, "source": str, "dx": str, "pred": str})


def test_image_ids() -> set[str]:
    """image_ids of the held-out test images the shipped model was evaluated on (empty if unknown)."""
    table = test_predictions()
    return set() if table is None else set(table["image_id"].astype(str))


def test_predictions() -> pd.DataFrame | None:
    card = model_card() or {}
    path = weights_dir() / card.get("predictions_csv", "test_predictions.csv")
    if not path.is_file():
        return None
    return _read_predictions(str(path), _mtime(path))


# ---------------------------------------------------------------- images
def read_image_path(path: str | os.PathLike) -> np.ndarray:
    """A dataset image through the same intake path as uploads (raises core.intake.ImageRejected)."""
    from core.intake import load_image

    data = Path(path).read_bytes()
    return load_image(data, Path(path).name)


def read_mask_path(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    import cv2

    if not path or not Path(path).is_file():
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is not None and shape is not None and mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 image (HxW or HxWx3 RGB) as PNG in memory."""
    import cv2

    arr = np.ascontiguousarray(array)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def thumbnail_data_uri(rgb: np.ndarray, max_side: int = 96) -> str:
    import cv2

    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


# ---------------------------------------------------------------- labels and colours
def class_name(code: str) -> str:
    return CLASS_BY_CODE[code].name if code in CLASS_BY_CODE else str(code)


def class_label(code: str) -> str:
    """'Melanoma (mel)'."""
    return f"{class_name(code)} ({code})" if code in CLASS_BY_CODE else str(code)


def class_label_marked(code: str) -> str:
    """'Melanoma (mel) ▲' for malignant classes."""
    return class_label(code) + (f" {MALIGNANT_MARK}" if code in MALIGNANT_CODES else "")


def class_colour(code: str) -> str:
    return CLASS_BY_CODE[code].color if code in CLASS_BY_CODE else "#888888"


SHORT_NAMES = {"akiec": "Actinic keratosis/IEC", "bcc": "Basal cell carcinoma", "bkl": "Benign keratosis",
               "df": "Dermatofibroma", "mel": "Melanoma", "nv": "Nevus", "vasc": "Vascular lesion"}


def short_name(code: str) -> str:
    """Compact axis label (full names are in legends, hovers and the Analyze page)."""
    return SHORT_NAMES.get(code, class_name(code))


CLASS_COLOURS = {c.code: c.color for c in CLASSES}
SHORT_NAME_COLOURS = {short_name(c.code): c.color for c in CLASSES}
CLASS_NAME_COLOURS = {c.name: c.color for c in CLASSES}


def uncertainty_words(value: float) -> str:
    if value < 0.25:
        return "low"
    if value < 0.5:
        return "moderate"
    return "high"


def probability_figure(probs: dict[str, float], height: int = 330):
    """Horizontal bars of all 7 class probabilities, sorted; top 3 in their class colours, the rest grey;
    malignant classes labelled in red with ▲."""
    import plotly.graph_objects as go

    ordered = sorted(CLASS_CODES, key=lambda c: probs.get(c, 0.0), reverse=True)
    top3 = set(ordered[:3])
    values = [float(probs.get(c, 0.0)) for c in ordered]
    colours = [class_colour(c) if c in top3 else "#C9CED6" for c in ordered]
    ticks = []
    for rank, code in enumerate(ordered, start=1):
        name = class_name(code)
        name = f"<b>{name}</b>" if code in top3 else name
        mark = f" <span style='color:#B00020'>{MALIGNANT_MARK} malignant</span>" if code in MALIGNANT_CODES else ""
        ticks.append(f"{name}{mark}")
    fig = go.Figure(go.Bar(
        x=values, y=list(range(len(ordered))), orientation="h", marker_color=colours,
        marker_line_color=["#B00020" if c in MALIGNANT_CODES else "rgba(0,0,0,0)" for c in ordered],
        marker_line_width=1.5,
        text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
        customdata=[class_label(c) for c in ordered],
        hovertemplate="%{customdata}: %{x:.2%}<extra></extra>",
    ))
    fig.update_yaxes(tickvals=list(range(len(ordered))), ticktext=ticks, autorange="reversed")
    fig.update_xaxes(range=[0, 1.12], tickformat=".0%", title="Calibrated probability")
    fig.update_layout(height=height, margin=dict(l=10, r=30, t=10, b=40), showlegend=False)
    return fig


def measurement_rows(m: dict) -> pd.DataFrame:
    """core.lesion_measurements.measure_lesion output -> a two-column table for display."""
    if not m or m.get("empty"):
        return pd.DataFrame({"Measurement": ["Lesion"], "Value": ["no lesion found in the mask"]})

    def mm(value):
        return f"{value:.1f} mm" if value is not None else "— (enter field of view)"

    area_mm = m.get("area_mm2")
    rows = [
        ("Area", f"{m['area_px']:,} px" + (f" · {area_mm:.1f} mm²" if area_mm is not None else "")),
        ("Max diameter", f"{m['max_diameter_px']:.0f} px · {mm(m.get('max_diameter_mm'))}"),
        ("Perimeter", f"{m['perimeter_px']:.0f} px · {mm(m.get('perimeter_mm'))}"),
        ("Asymmetry (0 = symmetric)", f"{m['asymmetry']:.2f}"),
        ("Border irregularity (1 = circle)", f"{m['border_irregularity']:.2f}"),
        ("Colours", f"{m['n_colours']}: {', '.join(m['colours']) or '—'}"),
        ("Lesion fraction of image", f"{m['lesion_fraction']:.0%}"),
    ]
    return pd.DataFrame(rows, columns=["Measurement", "Value"])


def metric_pct(value) -> str:
    return "—" if value is None else f"{float(value):.1%}"


# ---------------------------------------------------------------- report
def headline_metrics(card: dict | None) -> dict:
    """Test-set headline numbers of the shipped mask-CN from the model card (for display and the PDF)."""
    cls = ((card or {}).get("metrics", {}).get("test", {}).get("classification", {}).get("mask_cn", {}))
    out = {
        "test accuracy": cls.get("accuracy"),
        "test balanced accuracy": cls.get("balanced_accuracy"),
        "test macro AUC": cls.get("macro_auc"),
        "test melanoma sensitivity": cls.get("per_class", {}).get("mel", {}).get("recall"),
    }
    return {k: v for k, v in out.items() if v is not None}


def build_report(rgb, result, mask, measurements: dict, cam, note: str = "") -> bytes:
    """core.report.build_pdf_report for one AnalysisResult (mask = the mask shown, cam = HxW map or None)."""
    from core.cam import overlay_heatmap, overlay_mask
    from core.report import build_pdf_report

    card = model_card() or {}
    return build_pdf_report(
        image_rgb=rgb,
        overlay_rgb=overlay_mask(rgb, mask, color=MASK_COLOUR, alpha=0.3, contour=True),
        cam_rgb=overlay_heatmap(rgb, cam, alpha=0.45) if cam is not None else None,
        probs=result.probs, label=result.label, uncertainty=result.uncertainty, ood=result.ood,
        ood_reason=result.ood_reason, measurements=measurements,
        model_info={"version": card.get("version", "unknown"), "created": card.get("created", "unknown"),
                    "metrics": headline_metrics(card)},
        clinician_note=note,
    )


@st.cache_data(show_spinner="Computing class activation maps…", max_entries=64)
def dataset_cam(_analyzer, path: str, class_code: str, method: str, version: str = "") -> np.ndarray:
    """CAM of a dataset image (not an upload: dataset images may be cached across sessions)."""
    return _analyzer.cam_for(read_image_path(path), class_code, method)

