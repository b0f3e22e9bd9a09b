"""Watched lesions in an archive result: the batch engine's rows (core.batch.batch_engine) of images whose patient,
lesion and date are known become one series per lesion, and each series says whether and when the lesion changed.

    python -m core.batch.lesion_series RESULT --visits LIST.csv [--since 2026-01-01] [--out changes.csv]

LIST.csv: the list the batch ran on (or any CSV) with a `path` (or `source`) column naming each image as the result
does, and `patient_id`, `lesion_id`, `date` (YYYY-MM-DD) columns; optional `mm_per_pixel`. The engine reads only the
path column, so one list serves both. Rows without a patient, lesion or date, and failed or refused images, are
left out.

The images are not read again: each visit is compared with the lesion's first visit from the stored values, as
core.analysis.followup.change_table does after registration. Without a registration, sizes are compared as they
are (in pixels, or mm with `mm_per_pixel`), which assumes the same dermatoscope at the same magnification at every
visit, as digital follow-up systems take them; a lesion touching the image border (its stored mask) is not
size-compared. A change of the most probable class or of the triage verdict is a change, stated first; then the
measurements beyond the no-change band (weights/followup_noise.json) in clinical order. `--since`: the lesions with
a visit on or after that date ("which of my watched lesions changed this year"), changes counted at those visits.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from core.analysis.followup import (BAND_FILE, BEYOND, CategoricalChange, change_sentence, change_table,
                                    clinical_order, load_band, touches_edge, values_of)
from core.analysis.inference import DEFAULT_WEIGHTS_DIR
from core.batch.batch_results import ResultError, read_result
from core.data.classes import CLASS_BY_CODE, CLASS_CODES
from core.decisions.triage import HEADLINES
from core.decisions.model_card import load_card
from core.lesion.mask_rle import decode_mask

VISIT_COLUMNS = ("patient_id", "lesion_id", "date")
SERIES_COLUMNS = ("patient_id", "lesion_id", "visits", "first_visit", "last_visit", "days", "changed_at", "changes",
                  "verdict")


class SeriesInputError(ValueError):
    """A visits list without the columns a series needs; the message names the file and what is missing."""


def read_visits(path: str | Path) -> pd.DataFrame:
    """source, patient_id, lesion_id, date (datetime.date) and mm_per_pixel (float or NaN) of a visits CSV."""
    try:
        table = pd.read_csv(path, dtype=str).fillna("")
    except Exception as exc:  # noqa: BLE001 - pandas raises many kinds for a bad CSV
        raise SeriesInputError(f"{path}: not a readable CSV ({exc})") from None
    key = "source" if "source" in table.columns else "path" if "path" in table.columns else None
    missing = [c for c in VISIT_COLUMNS if c not in table.columns] + ([] if key else ["path (or source)"])
    if missing:
        raise SeriesInputError(f"{Path(path).name}: needs the column(s) {', '.join(missing)}")
    dates = pd.to_datetime(table["date"], errors="coerce", format="mixed")
    visits = pd.DataFrame({"source": table[key], "patient_id": table["patient_id"].str.strip(),
                           "lesion_id": table["lesion_id"].str.strip(), "date": dates.dt.date,
                           "mm_per_pixel": pd.to_numeric(table.get("mm_per_pixel", ""), errors="coerce")})
    return visits[(visits["patient_id"] != "") & (visits["lesion_id"] != "") & dates.notna().to_numpy()]


def _edge(row) -> bool:
    if not row["mask_rle"] or pd.isna(row["mask_height"]):
        return False
    return touches_edge(decode_mask(row["mask_rle"], int(row["mask_height"]), int(row["mask_width"])))


def _findings(first, later, band: dict | None) -> list[str]:
    """The changes from the first visit's row to a later one, most important first."""
    sizes = not (_edge(first) or _edge(later))
    mm_first, mm_later = first["mm_per_pixel"], later["mm_per_pixel"]
    scale = mm_later / mm_first if pd.notna(mm_first) and pd.notna(mm_later) else 1.0
    probs = {code: later[f"p_{code}"] for code in CLASS_CODES}
    changes = change_table(values_of(first, {code: first[f"p_{code}"] for code in CLASS_CODES}),
                           values_of(later, probs), scale, sizes, band)
    found = []
    if first["pred"] != later["pred"]:
        found.append(CategoricalChange("most probable class", CLASS_BY_CODE[first["pred"]].name,
                                       CLASS_BY_CODE[later["pred"]].name))
    if first["triage"] and later["triage"] and first["triage"] != later["triage"]:
        found.append(CategoricalChange("triage verdict", HEADLINES.get(first["triage"], first["triage"]),
                                       HEADLINES.get(later["triage"], later["triage"])))
    mm = mm_first if pd.notna(mm_first) else None
    return ([c.sentence() for c in found]
            + [change_sentence(c, mm) for c in clinical_order([c for c in changes if c.status == BEYOND])])


def lesion_series(result: pd.DataFrame, visits: pd.DataFrame, band: dict | None, since=None) -> pd.DataFrame:
    """One row per lesion (SERIES_COLUMNS) of the result rows named in ``visits`` (read_visits): its visits, the
    first visit with a change and the changes there, and the verdict; lesions with a change first. ``since``: only
    lesions with a visit on or after that date, changes counted at those visits."""
    rows = result[(result["error"] == "") & (result["pred"] != "")].merge(visits, on="source", how="inner")
    out = []
    for (patient, lesion), group in rows.groupby(["patient_id", "lesion_id"], sort=True):
        group = group.sort_values("date", kind="stable").drop_duplicates("source")
        if since is not None and not (group["date"] >= since).any():
            continue
        first = group.iloc[0]
        changed_at, changes = None, []
        for number in range(2, len(group) + 1):
            later = group.iloc[number - 1]
            if since is not None and later["date"] < since:
                continue
            found = _findings(first, later, band)
            if found:
                changed_at, changes = number, found
                break
        days = (group["date"].iloc[-1] - first["date"]).days
        if len(group) < 2:
            verdict = "one visit: nothing to compare"
        elif band is None:
            verdict = "no no-change band: not assessed"
        elif changed_at is None:
            verdict = f"stable over {len(group)} visits ({days} days)"
        else:
            verdict = f"changed at visit {changed_at} ({group['date'].iloc[changed_at - 1].isoformat()})"
        out.append({"patient_id": patient, "lesion_id": lesion, "visits": len(group),
                    "first_visit": first["date"].isoformat(), "last_visit": group["date"].iloc[-1].isoformat(),
                    "days": days, "changed_at": changed_at, "changes": "; ".join(changes), "verdict": verdict})
    table = pd.DataFrame(out, columns=list(SERIES_COLUMNS))
    return table.sort_values(["changed_at", "patient_id", "lesion_id"], na_position="last", kind="stable",
                             ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.batch.lesion_series", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="a batch result (folder with manifest.json, Parquet folder or file)")
    parser.add_argument("--visits", required=True, help="CSV with path (or source), patient_id, lesion_id, date")
    parser.add_argument("--since", default=None, help="only lesions with a visit on or after this date (YYYY-MM-DD)")
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS_DIR), help="weights folder (the no-change band)")
    parser.add_argument("--out", default=None, help="write the table as CSV here (default: print it)")
    args = parser.parse_args(argv)
    try:
        since = pd.Timestamp(args.since).date() if args.since else None
        table = lesion_series(read_result(args.result), read_visits(args.visits),
                              load_band(Path(args.weights) / BAND_FILE, load_card(args.weights))[0], since)
    except (ResultError, SeriesInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        table.to_csv(args.out, index=False)
    else:
        print(table.to_string(index=False))
    changed = int(table["changed_at"].notna().sum())
    print(f"{len(table)} lesion(s), {changed} changed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
