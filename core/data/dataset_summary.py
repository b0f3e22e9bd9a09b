"""Counts per source, class, age, sex, site and dx_type of a manifest, overall and per split (JSON-ready)."""
from __future__ import annotations

import pandas as pd

from core.data.classes import CLASS_CODES
from core.data.datasets import ISIC_DX_TYPE, SOURCES
from core.data.splits import SPLITS, _check_manifest


def dataset_summary(manifest: pd.DataFrame) -> dict:
    """Counts per source, class, age, sex, site and dx_type, overall and per split (JSON-ready)."""
    _check_manifest(
        manifest, ("dx", "source", "lesion_id", "age", "sex", "localization", "dx_type", "mask_path", "split"),
        "dataset_summary",
    )

    def counts(column: str, part: pd.DataFrame) -> dict:
        values = part[column].fillna("").astype(str).replace("", "unknown")
        return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}

    def describe(part: pd.DataFrame) -> dict:
        ages = pd.to_numeric(part["age"], errors="coerce")
        known = ages.dropna()
        return {
            "n_images": int(len(part)),
            "n_lesions": int(part["lesion_id"].nunique()),
            "source": counts("source", part),
            "dx": {code: int((part["dx"] == code).sum()) for code in CLASS_CODES},
            "sex": counts("sex", part),
            "localization": counts("localization", part),
            "dx_type": counts("dx_type", part),
            "age": {
                "mean": round(float(known.mean()), 1) if len(known) else None,
                "median": float(known.median()) if len(known) else None,
                "missing": int(ages.isna().sum()),
                "histogram": {str(int(k)): int(v) for k, v in (known // 10 * 10).value_counts().sort_index().items()},
            },
            "with_mask": int((part["mask_path"].fillna("") != "").sum()),
        }

    summary = {"all": describe(manifest), "sources": sorted(manifest["source"].unique().tolist())}
    summary["splits"] = {s: describe(manifest[manifest["split"] == s]) for s in SPLITS if (manifest["split"] == s).any()}
    return summary


def images_per_source(summary: dict, part: dict) -> dict[str, int]:
    """Images per source of one part of `summary` (its "all" or one of its "splits"). Summaries written before the
    per-source counts existed hold HAM10000 and ISIC 2017 only; there ISIC 2017 is the dx_type ISIC_DX_TYPE count and
    HAM10000 the rest (other sources cannot be told apart: {} then)."""
    if "source" in part:
        return dict(part["source"])
    if not set(summary.get("sources", [])) <= set(SOURCES):
        return {}
    isic = int(part.get("dx_type", {}).get(ISIC_DX_TYPE, 0))
    counts = {"ham10000": int(part.get("n_images", 0)) - isic, "isic2017": isic}
    return {source: n for source, n in counts.items() if n}
