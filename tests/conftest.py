"""Shared fixtures. The real data folder comes from env DATA_DIR (default <repo>/../shared/data)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) from anywhere
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
# train.train flags of a tiny run: a few steps on small real subsets (heavy training stays out of the tests)
TINY = ["--epochs", "1", "--max-train-images", "48", "--max-val-images", "16", "--batch-size", "8",
        "--use-cache", "false", "--threads", "2"]


def pytest_report_header(config) -> str:
    """What this CPU runs (core.models.cpu_support): the precision and engine tests test that, and say so."""
    from core.models.cpu_support import describe

    return describe()


def _resolve_data_dir() -> Path:
    value = os.environ.get("DATA_DIR", "").strip()
    if not value:
        return DEFAULT_DATA_DIR.resolve()
    path = Path(value).expanduser()
    if not path.is_absolute():
        # relative to the working directory if it exists there, else relative to the repo root
        path = path if path.exists() else REPO_ROOT / path
    return path.resolve()


@pytest.fixture(scope="session", autouse=True)
def audit_store(tmp_path_factory):
    """Every analysis the tests run (AppTest pages, app servers started as subprocesses) is audited into a throwaway
    SQLite file, never into the user's own store (~/.local/share/lesionlens/audit.sqlite); tests that need their own
    store set LESIONLENS_AUDIT_URL themselves."""
    from core.security.audit import URL_ENV

    url = f"sqlite:///{tmp_path_factory.mktemp('audit') / 'audit.sqlite'}"
    previous = os.environ.get(URL_ENV)
    os.environ[URL_ENV] = url
    yield url
    if previous is None:
        os.environ.pop(URL_ENV, None)
    else:
        os.environ[URL_ENV] = previous


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _resolve_data_dir()
    if not (path / "ham10000").is_dir():
        pytest.fail(
            f"real data not found: {path} has no ham10000/ folder. Point DATA_DIR at the data folder "
            f"(e.g. DATA_DIR=../shared/data, the layout described in README.md) and run again.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def ham_manifest(data_dir):
    """load_manifest of HAM10000 only (10,015 rows), read once per session; do not modify it in tests."""
    from core.data.datasets import load_manifest

    return load_manifest(data_dir, sources=("ham10000",))


@pytest.fixture(scope="session")
def ham_split(ham_manifest):
    """ham_manifest with the seed-42 grouped split (what `python -m train.splits` writes); read-only."""
    from core.data.splits import assign_splits

    return assign_splits(ham_manifest, seed=42)


@pytest.fixture(scope="session")
def isic_manifest(data_dir):
    from core.data.datasets import load_manifest

    return load_manifest(data_dir, sources=("isic2017",))


def write_tiny_ham(root: Path, per_class: int = 4, images_per_lesion: int = 1, layout: str = "official") -> Path:
    """A small synthetic HAM10000-shaped folder (real layout, fake pixels) for error-path and CLI tests.

    layout="official": HAM10000_images_part_1/2 + HAM10000_segmentations_lesion_tschandl;
    layout="flat": images/ + masks/.
    """
    import cv2
    import numpy as np

    from core.data.classes import CLASS_CODES

    root.mkdir(parents=True, exist_ok=True)
    if layout == "official":
        folders = [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"]
        mask_folder = root / "HAM10000_segmentations_lesion_tschandl"
    else:
        folders = [root / "images"]
        mask_folder = root / "masks"
    for f in folders + [mask_folder]:
        f.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["lesion_id,image_id,dx,dx_type,age,sex,localization"]
    n = 0
    for code in CLASS_CODES:
        for lesion in range(per_class):
            for _ in range(images_per_lesion):
                image_id = f"ISIC_{9000000 + n:07d}"
                lines.append(f"HAM_{code}_{lesion:03d},{image_id},{code},histo,{30 + n % 50}.0,male,back")
                rgb = np.full((30, 40, 3), (200, 150, 140), np.uint8)
                cv2.circle(rgb, (20, 15), 8, (int(rng.integers(40, 90)), 40, 30), -1)
                mask = np.zeros((30, 40), np.uint8)
                cv2.circle(mask, (20, 15), 8, 255, -1)
                cv2.imwrite(str(folders[n % len(folders)] / f"{image_id}.jpg"), rgb[:, :, ::-1])
                cv2.imwrite(str(mask_folder / f"{image_id}_segmentation.png"), mask)
                n += 1
    (root / "HAM10000_metadata.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def tiny_ham(tmp_path) -> Path:
    """A fresh synthetic HAM10000 folder (official layout, 7 classes x 4 lesions) under tmp_path."""
    return write_tiny_ham(tmp_path / "ham")


@pytest.fixture
def tiny_ham_factory():
    """The write_tiny_ham function, for tests that need other sizes or layouts."""
    return write_tiny_ham


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, data_dir):
    """The three MB-DCNN stages, wired as train.train_all wires them, each for a few steps at small sizes."""
    from train import train as train_stage

    runs = tmp_path_factory.mktemp("runs")
    common = ["--data-dir", str(data_dir), "--max-train-batches", "2", *TINY]
    seg = ["--image-size", "96x128"]
    coarse = train_stage.main(["--stage", "coarse_sn", "--out-dir", str(runs / "coarse_sn"), *seg, *common])
    mask_cn = train_stage.main(["--stage", "mask_cn", "--out-dir", str(runs / "mask_cn"), "--image-size", "75x100",
                                "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"), *common])
    enhanced = train_stage.main(["--stage", "enhanced_sn", "--out-dir", str(runs / "enhanced_sn"), *seg,
                                 "--freeze-blocks", "2", "--coarse-sn", str(runs / "coarse_sn" / "best.safetensors"),
                                 "--mask-cn", str(runs / "mask_cn" / "best.safetensors"), *common])
    return runs, {"coarse_sn": coarse, "mask_cn": mask_cn, "enhanced_sn": enhanced}


@pytest.fixture(scope="module")
def weights_card():
    """The model card of the weights the dashboard serves (LESIONLENS_WEIGHTS or weights/), as JSON data."""
    from apptest_support import WEIGHTS
    from core.decisions.model_card import read_card_json

    if not (WEIGHTS / "model_card.json").is_file():
        pytest.fail(f"{WEIGHTS / 'model_card.json'} is missing: the dashboard tests need the shipped weights "
                    "(train + calibrate first)", pytrace=False)
    return read_card_json(WEIGHTS)


@pytest.fixture(scope="session")
def card_with():
    """card_with(triage={...}, ...): the typed shipped model card with some sections replaced."""
    from core.decisions.model_card import card_from_dict, read_card_json

    shipped = read_card_json(Path(__file__).resolve().parent.parent / "weights")
    return lambda **sections: card_from_dict({**shipped, **sections})


@pytest.fixture
def app(monkeypatch, data_dir):
    """The dashboard (streamlit_app.py) run once in AppTest with DATA_DIR set to the real data."""
    from apptest_support import start_app

    monkeypatch.setenv("DATA_DIR", str(data_dir))
    return start_app(data_dir)


@pytest.fixture
def downloads(monkeypatch):
    """file name -> bytes of every st.download_button called at module level in the app (e.g. the Batch CSV)."""
    import streamlit

    seen = {}
    real = streamlit.download_button

    def record(label, data, file_name=None, *args, **kwargs):
        seen[file_name] = data() if callable(data) else data
        return real(label, data, file_name, *args, **kwargs)

    monkeypatch.setattr(streamlit, "download_button", record)
    return seen


@pytest.fixture(scope="session")
def clinical_photo(data_dir) -> Path:
    """A real clinical (camera) photograph of skin from a DermNet category the shipped dermoscopy check never saw
    (the first of the card's held-out images: calibration.fit_dermoscopy_check)."""
    import json

    card = json.loads((Path(__file__).resolve().parent.parent / "weights" / "model_card.json").read_text())
    return data_dir / "clinical" / "images" / f"{card['dermoscopy_check']['held_out_clinical_images'][0]}.jpg"
