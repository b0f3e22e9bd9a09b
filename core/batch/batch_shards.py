"""Shards of an archive analysis: which images go together, what each is called, and the one function that analyses
a shard and writes its Parquet file (both back-ends of core.batch.batch_engine call `analyse_shard`, so their rows are
identical).

A shard is a run of consecutive images of the sorted input list. Its key is the SHA-256 of the model fingerprint
(the SHA-256 of model_card.json, which pins every weight file's SHA-256 and every fitted rule) and of each image's
(source name, content SHA-256): the same images under the same model always get the same file name,
`shards/shard-<key>.parquet`, and any change of an image or of the model gives a new one. A shard file is written to a
temporary name and renamed into place, so a file under its final name is always complete: a killed run leaves at most
temporaries (removed on the next start), and a restarted run skips every shard whose file exists.

One row per image (each frame of a multi-frame DICOM is an image: `image` `<stem>_frame<k>`, as the predict CLI
names it): every core.analysis.predict CSV column, typed (SCHEMA: age, the probabilities and mel_score as float64,
refer as a boolean, empty values as nulls, so pandas, DuckDB or Spark compute with them as they are), `analysed_at`
(UTC timestamp), then `source` (the image's
file name in the input: its path relative to the input folder, or as listed), `path` (where it was read), `sha256`, the
enhanced-SN mask as run-length encoding (`mask_rle`, core.lesion.mask_rle, with `mask_height` / `mask_width`) and the lesion
measurements (core.lesion.lesion_measurements; empty for an image that got no diagnosis). A file that cannot be read or
analysed is one row with its `error` and empty analysis columns.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.analysis.predict import COLUMNS, analyse_frames
from core.data.classes import CLASS_CODES
from core.lesion.mask_rle import encode_mask

SHARD_DIR = "shards"
TEMP_PREFIX = ".tmp-"
MEASUREMENT_COLUMNS = ("area_px", "perimeter_px", "max_diameter_px", "asymmetry", "border_irregularity", "n_colours",
                       "colours", "lesion_fraction")
EXTRA_FIELDS = [pa.field("source", pa.string()), pa.field("path", pa.string()), pa.field("sha256", pa.string()),
                pa.field("mask_rle", pa.string()), pa.field("mask_height", pa.int32()),
                pa.field("mask_width", pa.int32()),
                pa.field("area_px", pa.int64()), pa.field("perimeter_px", pa.float64()),
                pa.field("max_diameter_px", pa.float64()), pa.field("asymmetry", pa.float64()),
                pa.field("border_irregularity", pa.float64()), pa.field("n_colours", pa.int32()),
                pa.field("colours", pa.string()), pa.field("lesion_fraction", pa.float64())]
FLOAT_COLUMNS = ("age", *(f"p_{c}" for c in CLASS_CODES), "mel_score")
BOOL_COLUMNS = ("refer",)  # predictions.csv's yes / no
SCHEMA = pa.schema([pa.field(c, pa.float64() if c in FLOAT_COLUMNS else pa.bool_() if c in BOOL_COLUMNS else pa.string())
                    for c in COLUMNS] + [pa.field("analysed_at", pa.timestamp("us", tz="UTC"))] + EXTRA_FIELDS)


def typed_row(row: dict) -> dict:
    """A predict CSV row (strings) in SCHEMA's types: numbers as floats, yes / no as booleans, empty as null."""
    typed = dict(row)
    for column in FLOAT_COLUMNS:
        typed[column] = float(row[column]) if row[column] != "" else None
    for column in BOOL_COLUMNS:
        typed[column] = {"yes": True, "no": False}.get(row[column])
    return typed


def csv_strings(table):
    """A typed result table (pandas) back in the predict CSV's strings: what the Batch and Evaluate pages read (a
    column already of strings, from a result written before the typed schema, stays as it is)."""
    table = table.copy()
    for column in FLOAT_COLUMNS:
        if table[column].dtype.kind == "f":
            table[column] = ["" if v != v else f"{v:g}" if column == "age" else f"{v:.5f}" for v in table[column]]
    for column in BOOL_COLUMNS:
        table[column] = [("yes" if v else "no") if isinstance(v, (bool, np.bool_)) else "" if v is None else v
                         for v in table[column]]
    return table


@dataclass(frozen=True)
class Shard:
    """Images analysed and written together; `key` names the file (see the module docstring)."""
    key: str
    sources: tuple[str, ...]   # the images' names in the input (relative path or as listed)
    paths: tuple[str, ...]     # where each is read
    sha256: tuple[str, ...]    # each file's content hash when planned

    def __post_init__(self):
        if not self.sources or not len(self.sources) == len(self.paths) == len(self.sha256):
            raise ValueError("a shard needs one source, path and sha256 per image, and at least one image")
        if len(self.key) != 64 or any(c not in "0123456789abcdef" for c in self.key):
            raise ValueError(f"shard key must be 64 hex digits, got {self.key!r}")

    @property
    def file_name(self) -> str:
        return f"shard-{self.key}.parquet"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Shard":
        fields = json.loads(text)
        return cls(fields["key"], tuple(fields["sources"]), tuple(fields["paths"]), tuple(fields["sha256"]))


@dataclass(frozen=True)
class ShardReport:
    """What analysing one shard took (the summary's throughput and the per-worker memory figures)."""
    key: str
    n_files: int
    n_images: int         # rows written: a multi-frame DICOM gives one per frame
    n_errors: int
    seconds: float
    pid: int
    rss_mib: float        # the worker's resident memory after the shard
    peak_rss_mib: float   # the worker's peak resident memory so far


def file_sha256(path: str | os.PathLike) -> str:
    """The content hash of a file; "" when it cannot be read (the analysis then gives its error row)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def model_fingerprint(weights_dir: str | os.PathLike) -> str:
    """SHA-256 of the weights folder's model_card.json (it pins every weight file and every fitted rule)."""
    return hashlib.sha256((Path(weights_dir) / "model_card.json").read_bytes()).hexdigest()


def plan_shards(sources: list[str], paths: list[str], hashes: list[str], fingerprint: str,
                shard_size: int) -> list[Shard]:
    """Consecutive runs of `shard_size` images (in the given order) with their keys."""
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    shards = []
    for start in range(0, len(sources), shard_size):
        part = slice(start, start + shard_size)
        digest = hashlib.sha256(fingerprint.encode())
        for source, sha in zip(sources[part], hashes[part]):
            digest.update(f"\n{source}\t{sha}".encode())
        shards.append(Shard(digest.hexdigest(), tuple(sources[part]), tuple(paths[part]), tuple(hashes[part])))
    return shards


def file_rows(analyzer, source: str, path: str, sha256: str) -> list[dict]:
    """The Parquet rows of one file: one per image, i.e. per frame of a multi-frame DICOM (the module docstring lists
    the columns); never raises for a bad file."""
    return [_image_row(row, result, source, path, sha256) for row, result in analyse_frames(analyzer, Path(path))]


def _image_row(row: dict, result, source: str, path: str, sha256: str) -> dict:
    row = typed_row(row)
    row.update({"analysed_at": dt.datetime.now(dt.timezone.utc), "source": source, "path": path, "sha256": sha256, "mask_rle": None, "mask_height": None,
                "mask_width": None, **{m: None for m in MEASUREMENT_COLUMNS}})
    if result is None:
        return row
    height, width = result.mask.shape
    row.update({"mask_rle": encode_mask(result.mask), "mask_height": height, "mask_width": width})
    if result.diagnosis_shown and result.measurements:
        m = result.measurements
        row.update({k: m.get(k) for k in MEASUREMENT_COLUMNS if k != "colours"})
        row["colours"] = ", ".join(m.get("colours", []))
    return row


def shard_path(out_dir: str | os.PathLike, shard: Shard) -> Path:
    return Path(out_dir) / SHARD_DIR / shard.file_name


def analyse_shard(analyzer, shard: Shard, out_dir: str | os.PathLike) -> ShardReport:
    """Analyse every image of the shard and write its Parquet file atomically (temporary file, then rename)."""
    start = time.perf_counter()
    rows = [row for s, p, h in zip(shard.sources, shard.paths, shard.sha256) for row in file_rows(analyzer, s, p, h)]
    target = shard_path(out_dir, shard)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f"{TEMP_PREFIX}{os.getpid()}-{shard.file_name}")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), temporary)
    os.replace(temporary, target)
    return ShardReport(shard.key, len(shard.sources), len(rows), sum(1 for r in rows if r["error"]),
                       time.perf_counter() - start,
                       os.getpid(), _rss_mib("VmRSS"), _rss_mib("VmHWM"))


def remove_temporaries(out_dir: str | os.PathLike) -> int:
    """Delete the half-written shard files a killed run left; how many there were."""
    folder = Path(out_dir) / SHARD_DIR
    stale = list(folder.glob(f"{TEMP_PREFIX}*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _rss_mib(field: str) -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM) in MiB; ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
