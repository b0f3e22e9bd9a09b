"""The archive batch engine (core.batch.batch_engine) on 40 real HAM10000 images and two hostile files: the local back-end
writes predict's columns plus the mask RLE and measurements; Ray Data (a local 2-CPU Ray) writes exactly the same
rows; a run killed after its first shard resumes and gives each row once; a finished run does nothing when rerun;
the Batch and Evaluate pages open the Parquet result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from apptest_support import WEIGHTS, dataframe, metrics, page

from core.batch import batch_engine
from core.batch.batch_results import evaluation_of, read_labels, read_result
from core.lesion.mask_rle import decode_mask, encode_mask
from core.analysis.predict import COLUMNS
from core.data.classes import CLASS_CODES

N_REAL = 40
SHARD_SIZE = 7   # 42 files -> 6 shards
HOSTILE = ("truncated.jpg", "random_bytes.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("archive")
    real = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))[:N_REAL]
    for i, path in enumerate(real):  # two sub-folders: the engine lists recursively
        target = root / ("a" if i % 2 else "b") / path.name
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(path.read_bytes())
    (root / HOSTILE[0]).write_bytes(real[0].read_bytes()[:2000])
    (root / HOSTILE[1]).write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return root


@pytest.fixture(scope="module")
def labels(data_dir):
    return data_dir / "ham10000" / "HAM10000_metadata.csv"


@pytest.fixture(scope="module")
def local_result(folder, labels, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    summary = batch_engine.run(folder, out, WEIGHTS, workers=2, labels=str(labels), shard_size=SHARD_SIZE)
    return out, summary


def _rows(out: Path) -> pd.DataFrame:
    return read_result(out).sort_values("source").reset_index(drop=True)


def test_local_run_rows_errors_and_summary(local_result, folder):
    out, summary = local_result
    rows = _rows(out)
    assert len(rows) == N_REAL + 2 and rows["source"].is_unique
    assert len(list((out / "shards").glob("shard-*.parquet"))) == 6
    assert set(COLUMNS) <= set(rows.columns)
    bad = rows[rows["source"].isin(HOSTILE)]
    assert (bad["error"] != "").all() and (bad["pred"] == "").all() and bad["mask_rle"].isna().all()
    good = rows[~rows["source"].isin(HOSTILE)]
    assert (good["error"] == "").all() and (good["model_version"] != "").all()
    diagnosed = good[good["pred"] != ""]
    assert len(diagnosed) and diagnosed["area_px"].notna().all()
    assert summary["n_images"] == N_REAL + 2 and summary["errors"] == 2
    assert sum(summary["class_distribution"].values()) == len(diagnosed)
    assert summary["referred"] == int((rows["refer"] == "yes").sum())
    assert summary["images_analysed_now"] == N_REAL + 2 and summary["images_per_s"] > 0
    assert summary["evaluation"]["n_images"] == len(good)  # every real image is in the HAM10000 metadata


def test_rows_are_the_predict_clis_and_the_masks_decode(local_result, folder, tmp_path):
    """The Parquet rows hold core.analysis.predict's CSV row and its mask (RLE) for the same image."""
    from core.analysis import predict

    out, _ = local_result
    picked = sorted((folder / "a").glob("*.jpg"))[:3]
    assert predict.main([str(p) for p in picked] + ["--out", str(tmp_path), "--weights", str(WEIGHTS)]) == 0
    csv_rows = pd.read_csv(tmp_path / "predictions.csv", dtype=str, keep_default_na=False)
    rows = _rows(out).set_index("image").loc[csv_rows["image"]]
    pd.testing.assert_frame_equal(rows.reset_index()[COLUMNS], csv_rows[COLUMNS])
    for image, row in rows.iterrows():
        written = cv2.imread(str(tmp_path / "masks" / f"{image}.png"), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(decode_mask(row["mask_rle"], row["mask_height"], row["mask_width"]), written)


def test_a_multi_frame_dicom_gives_a_row_per_frame(tmp_path, data_dir):
    """Each frame of a multi-frame DICOM is an image: rows <stem>_frame<k> with the file as their source, the same
    rows as the predict CLI writes for that file."""
    import io

    import pydicom

    from core.analysis import predict
    from core.io.dicom_input import MadeUpPatient, wrap_jpeg

    jpeg = sorted((data_dir / "ham10000" / "images").glob("*.jpg"))[0].read_bytes()
    ds = pydicom.dcmread(io.BytesIO(wrap_jpeg(jpeg, MadeUpPatient("DCM-1", name="Doe^Jane", age=50, sex="female",
                                                                     site="back"))))
    frame = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData, ds.NumberOfFrames = pydicom.encaps.encapsulate(frame * 2), 2
    folder = tmp_path / "in"
    folder.mkdir()
    ds.save_as(folder / "two.dcm", enforce_file_format=True)
    summary = batch_engine.run(folder, tmp_path / "out", WEIGHTS, workers=1, shard_size=4)
    rows = read_result(tmp_path / "out").sort_values("image").reset_index(drop=True)
    assert list(rows["image"]) == ["two_frame1", "two_frame2"] and set(rows["source"]) == {"two.dcm"}
    assert (rows["error"] == "").all() and rows["mask_rle"].notna().all() and summary["n_images"] == 2
    assert predict.main([str(folder / "two.dcm"), "--out", str(tmp_path / "cli"), "--weights", str(WEIGHTS)]) == 0
    csv_rows = pd.read_csv(tmp_path / "cli" / "predictions.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(rows[COLUMNS], csv_rows[COLUMNS])


def test_mask_rle_round_trip():
    rng = np.random.default_rng(1)
    masks = [np.zeros((5, 4), np.uint8), np.full((3, 3), 255, np.uint8),
             (rng.random((40, 30)) > 0.5).astype(np.uint8) * 255]
    masks[0][0, 0] = masks[0][-1, -1] = 255  # lesion runs at both ends
    for mask in masks:
        assert np.array_equal(decode_mask(encode_mask(mask), *mask.shape), mask)
    assert encode_mask(np.zeros((2, 2), np.uint8)) == "4"
    with pytest.raises(ValueError):
        decode_mask("3 2", 2, 2)


def test_rerun_of_a_finished_run_does_nothing(local_result, folder, labels):
    out, _ = local_result
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    summary = batch_engine.run(folder, out, WEIGHTS, workers=2, labels=str(labels), shard_size=SHARD_SIZE)
    assert summary["images_analysed_now"] == 0 and summary["shards_skipped"] == 6
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == stamps


@pytest.fixture
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False,
             runtime_env=batch_engine.RAY_RUNTIME_ENV, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_back_end_writes_the_same_rows(local_ray, local_result, folder, tmp_path):
    out, _ = local_result
    summary = batch_engine.run(folder, tmp_path, WEIGHTS, ray_address="local", shard_size=SHARD_SIZE)
    assert summary["backend"].startswith("ray") and summary["images_analysed_now"] == N_REAL + 2
    assert len(summary["workers"]) == 2  # an actor pool of the cluster's two CPUs
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == sorted(p.name for p in (out / "shards").iterdir())
    when = "analysed_at"  # the rows are the same, not the moment each was written
    pd.testing.assert_frame_equal(_rows(tmp_path).drop(columns=when), _rows(out).drop(columns=when))


def test_a_killed_run_resumes_and_gives_each_row_once(folder, tmp_path, repo_root):
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    process = subprocess.Popen([sys.executable, "-m", "core.batch.batch_engine", str(folder), "--out", str(tmp_path),
                                "--workers", "1", "--shard-size", str(SHARD_SIZE), "--weights", str(WEIGHTS)],
                               cwd=repo_root, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "shards").glob("shard-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its worker process, mid-run
    process.wait()
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("shard-*")}
    assert 1 <= len(first) < 6
    summary = batch_engine.run(folder, tmp_path, WEIGHTS, workers=2, shard_size=SHARD_SIZE)
    assert summary["shards_skipped"] == len(first)
    assert summary["images_analysed_now"] == N_REAL + 2 - sum(SHARD_SIZE for _ in first)
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "shards").glob("shard-*"))
            if n in first} == first
    assert not list((tmp_path / "shards").glob(".tmp-*"))
    rows = read_result(tmp_path)
    assert len(rows) == N_REAL + 2 and rows["source"].is_unique


def test_bad_input_and_labels_are_refused_in_words(tmp_path, labels):
    (tmp_path / "empty").mkdir()
    with pytest.raises(batch_engine.BatchInputError, match="no image files"):
        batch_engine.run(tmp_path / "empty", tmp_path / "out", WEIGHTS)
    bad = tmp_path / "labels.csv"
    bad.write_text("image,dx\nISIC_1,melanoma\n")
    with pytest.raises(ValueError, match="row 2"):
        read_labels(bad)


def test_the_batch_page_opens_a_parquet_result(app, local_result):
    out, _ = local_result
    at = page(app, "app_pages/batch.py")
    at.text_input(key="batch_result_path").set_value(str(out)).run()
    at.button(key="batch_result_open").click().run()
    assert not at.exception, at.exception
    shown = metrics(at)
    assert shown["Images"] == str(N_REAL + 2) and shown["Rejected / failed"] == "2"
    table = dataframe(at, "status")
    assert sorted(table["file"]) == sorted(read_result(out)["source"])
    assert table["true_dx"].notna().sum() == N_REAL  # the run's labels.csv


def test_the_evaluate_page_opens_a_parquet_result_with_labels(app, local_result, labels):
    out, _ = local_result
    at = page(app, "app_pages/evaluate.py")
    at.text_input(key="eval_result_path").set_value(str(out)).run()
    at.text_input(key="eval_labels").set_value(str(labels)).run()
    at.button(key="eval_result_open").click().run()
    assert not at.exception, at.exception
    expected = evaluation_of(read_result(out), labels).summary
    shown = metrics(at)
    assert shown["Images evaluated"] == str(expected["n_images"]) == str(N_REAL)
    ci = expected["classification"]["ci"]
    assert shown["Balanced accuracy"] == f"{ci['balanced_accuracy']['value']:.1%}"


def test_shards_are_typed_for_a_researchers_tools(local_result):
    """The Parquet shards hold numbers as numbers: a researcher's pandas / DuckDB / Spark computes on p_mel as it is
    (every column used to be text, p_mel the string "0.01330")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, _ = local_result
    shard = sorted((out / "shards").glob("shard-*.parquet"))[0]
    schema = pq.read_schema(shard)
    assert schema.field("p_mel").type == pa.float64() and schema.field("mel_score").type == pa.float64()
    assert schema.field("age").type == pa.float64() and schema.field("refer").type == pa.bool_()
    assert schema.field("analysed_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("mask_height").type == pa.int32() and schema.field("pred").type == pa.string()
    raw = pq.read_table(shard).to_pandas()
    diagnosed = raw[raw["pred"] != ""]
    assert len(diagnosed) and (diagnosed[[f"p_{c}" for c in CLASS_CODES]].sum(axis=1) - 1).abs().max() < 1e-3
    assert diagnosed["refer"].map(type).eq(bool).all()
    shown = read_result(shard)  # the pages read them in the predict CSV's strings, as before
    assert set(shown["refer"]) <= {"yes", "no", ""} and shown["p_mel"].map(type).eq(str).all()
