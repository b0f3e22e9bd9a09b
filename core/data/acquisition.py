"""Acquisition source of each image: the clinic, dermatoscope and era it comes from.

HAM10000 was assembled from four sources (its metadata's `dataset` column), ISIC 2017 is a fifth, many-clinic
source, and the acral images (palms, soles, nails; other clinics and a body site HAM10000 hardly has) a sixth. Class mixes and devices differ by source, so training without one source and testing on it is the closest
the data comes to "a clinic the model has never seen" (calibration.out_of_source).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

SOURCE_NAMES = {
    "vidir_molemax": "Vienna, MoleMax HD (mostly nevi)",
    "vidir_modern": "Vienna, modern dermatoscopes",
    "rosendahl": "Queensland practice (most akiec and bcc)",
    "vienna_dias": "Vienna, older DermLite / DIAS",
    "isic2017": "ISIC 2017 archive (many clinics)",
    "acral": "ISIC Archive acral: palms, soles, nails (five contributors)",
}
HAM_METADATA = Path("ham10000") / "HAM10000_metadata.csv"
ACRAL_LABELS = Path("acral") / "labels.csv"
# Each acral contributor is a clinic of its own: holding one out is "a new acral clinic", all acral at once is not.
ACRAL_CONTRIBUTORS = {"Imperial College London": "acral_imperial", "International Dermoscopy Society": "acral_ids"}
ACRAL_OTHER = "acral_other"  # the contributors with fewer than 100 images, held out together


def acquisition_sources(manifest: pd.DataFrame, data_dir: str | os.PathLike,
                        acral_contributors: bool = False) -> pd.Series:
    """The acquisition source of every manifest row: HAM10000's `dataset` value (read from DATA_DIR's metadata CSV),
    the manifest's own `source` otherwise ('isic2017', 'acral'); with `acral_contributors`, an acral row's
    contributor instead (ACRAL_CONTRIBUTORS, else ACRAL_OTHER). Raises ValueError when a HAM10000 row has
    no source in the metadata (an old metadata file without the `dataset` column)."""
    out = manifest["source"].astype(str).copy()
    acral = manifest["source"] == "acral"
    if acral_contributors and acral.any():
        labels = pd.read_csv(Path(data_dir) / ACRAL_LABELS, usecols=["image_id", "source"], dtype=str,
                             keep_default_na=False).drop_duplicates("image_id").set_index("image_id")["source"]
        contributor = manifest.loc[acral, "image_id"].map(labels)
        out[acral] = contributor.map(ACRAL_CONTRIBUTORS).fillna(ACRAL_OTHER)
    ham = manifest["source"] == "ham10000"
    if ham.any():
        metadata = pd.read_csv(Path(data_dir) / HAM_METADATA, usecols=lambda c: c in ("image_id", "dataset"))
        if "dataset" not in metadata.columns:
            raise ValueError(f"{Path(data_dir) / HAM_METADATA} has no `dataset` column (acquisition source)")
        by_image = metadata.drop_duplicates("image_id").set_index("image_id")["dataset"]
        found = manifest.loc[ham, "image_id"].map(by_image)
        if found.isna().any():
            missing = manifest.loc[ham, "image_id"][found.isna()].iloc[0]
            raise ValueError(f"HAM10000 image {missing} has no acquisition source in {HAM_METADATA}")
        out[ham] = found.astype(str)
    return out


def describe(source: str) -> str:
    return f"{source} ({SOURCE_NAMES[source]})" if source in SOURCE_NAMES else source
