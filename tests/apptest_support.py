"""Helpers for the AppTest suites (tests/test_app_pages.py, tests/test_app_rules.py, tests/test_evaluate_page.py):
the dashboard started from its entry point, page switching, and readers of what a page shows."""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "streamlit_app.py")
TIMEOUT = 300
WEIGHTS = Path(os.environ.get("LESIONLENS_WEIGHTS") or REPO / "weights")  # same rule as ui.analyzers


def start_app(data_dir: Path | str) -> AppTest:
    os.environ["DATA_DIR"] = str(data_dir)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def page(at: AppTest, path: str) -> AppTest:
    at.switch_page(path)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [t.value for t in at.title]
    parts += [s.value for s in at.subheader] + [h.value for h in at.header]
    return "\n".join(str(p) for p in parts)


def alerts(at: AppTest) -> list[str]:
    return [a.value for a in list(at.error) + list(at.warning) + list(at.info) + list(at.success)]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def metric_deltas(at: AppTest) -> dict[str, str]:
    return {m.label: m.proto.delta for m in at.metric}


def dataframe(at: AppTest, column: str):
    """The first st.dataframe / st.table that has `column`."""
    frames = [frame.value for frame in list(at.dataframe) + list(at.table)]
    for frame in frames:
        if column in frame.columns:
            return frame
    raise AssertionError(f"no dataframe with column {column!r}; have {[list(f.columns) for f in frames]}")


def figure(at: AppTest, key: str) -> dict:
    """The plotly figure (JSON) of the chart with this key."""
    charts = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key)]
    assert charts, f"no chart {key!r}"
    return json.loads(charts[0].proto.spec)


def values(data) -> list:
    """A figure's data array as a list (plotly writes numeric arrays as base64 typed arrays)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def keyed_block(at: AppTest, key: str):
    """The container created with st.container(key=key), or None."""
    stack = [at.main]
    while stack:
        node = stack.pop()
        if getattr(node, "type", "") == "flex_container" or hasattr(node, "children"):
            proto = getattr(node, "proto", None)
            if proto is not None and str(getattr(proto, "id", "")).endswith(f"-{key}"):
                return node
            stack.extend(getattr(node, "children", {}).values())
    return None


def upload(at: AppTest, key: str, files) -> AppTest:
    at.file_uploader(key=key).set_value(files).run()
    assert not at.exception, at.exception
    return at


def class_folder(root: Path, data_dir: Path, per_class: int) -> Path:
    """ROOT/<class>/<image>.jpg: `per_class` HAM10000 test-split images of every class (as weights/test_predictions.csv
    lists them) and ROOT/mel/broken.jpg, a file that is not an image."""
    import shutil

    import pandas as pd

    table = pd.read_csv(WEIGHTS / "test_predictions.csv", dtype=str)
    for dx, part in table[table["source"] == "ham10000"].groupby("dx"):
        (root / dx).mkdir(parents=True)
        for image_id in part["image_id"].head(per_class):
            shutil.copy(Path(data_dir) / "ham10000" / "images" / f"{image_id}.jpg", root / dx)
    (root / "mel" / "broken.jpg").write_bytes(b"not an image")
    return root
