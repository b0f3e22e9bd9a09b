"""Build the whole model card from the trained runs, in order, and write it once.

    python -m calibration.calibrate --config calibration/presets/shipped.toml        # the shipped weights' recipe
    python -m calibration.calibrate --config calibration/presets/shipped.toml --runs runs_v2 --weights weights_v2

Steps (STEPS, in this order); each returns the card sections it owns, reads those of the steps before it and changes
none of them (a later step may supersede a section as a whole, which the log says):
1. evaluate          fp16 networks, OOD model and case index to WEIGHTS; decision rule, patient context, retrieval,
                     segmentation TTA, split, test figures (calibration.evaluate)
2. dermoscopy_check  the dermoscopy check on the classifier's input (calibration.fit_dermoscopy_check)
3. out_of_source     referral, triage, uncertainty, unusual flag and conformal sets fitted across acquisition
                     sources, with their held-out figures (calibration.out_of_source)
4. image_quality     the quality checks, on the Analyzer of the card so far; then the test predictions' triage
                     column (calibration.fit_image_quality)
5. followup_noise    WEIGHTS/followup_noise.json, the Compare page's no-change band, with the Analyzer of the card
6. results           the results page (calibration.summarize)
The card is checked by the app's reader (core.decisions.model_card) and written atomically (calibration.card_io) at the
end; a run that fails leaves the previous card in place (but WEIGHTS' weight files already replaced: re-run to finish).
The split is the one the runs were trained on (their history.json configs).
"""
from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

from core.decisions.model_card import card_from_dict
from calibration.card_io import Split, merged, write_card

STEPS = ("evaluate", "dermoscopy_check", "out_of_source", "image_quality", "followup_noise", "results")
SETTINGS = {  # key -> (type, default): the [calibrate] table of a preset
    "data_dir": (str, "../shared/data"), "runs": (str, "runs"), "weights": (str, "weights"), "version": (str, ""),
    "oos_out": (str, "runs/oos"), "measures": (str, "runs/image_quality"),
    "dermoscopy_features": (str, ".cache/dermoscopy_check/features.npz"), "dermoscopy_seed": (int, 0),
    "followup_pairs": (int, 400), "followup_seed": (int, 42), "results": (str, "docs/results.md"),
    "max_images": (int, 0), "use_cache": (bool, True),
}


def settings(argv=None) -> dict:
    """The preset's [calibrate] table, each key overridable by --key value."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="a preset TOML with a [calibrate] table (calibration/presets/)")
    for key, (kind, _) in SETTINGS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=(lambda v: v.lower() == "true") if kind is bool else kind)
    args = parser.parse_args(argv)
    preset = tomllib.loads(args.config.read_text()).get("calibrate", {}) if args.config else {}
    unknown = set(preset) - set(SETTINGS)
    if unknown:
        parser.error(f"{args.config}: unknown [calibrate] keys {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    chosen = {key: default for key, (_, default) in SETTINGS.items()} | preset
    chosen |= {key: value for key, value in vars(args).items() if key in SETTINGS and value is not None}
    return chosen


def calibrate(s: dict) -> dict:
    """Run STEPS on the settings `s`; returns the card written."""
    from core.analysis.inference import Analyzer
    from calibration.evaluate import evaluate
    from calibration.fit_dermoscopy_check import dermoscopy_check
    from calibration.fit_image_quality import image_quality, write_triage_column
    from calibration.followup_noise import noise_band_file
    from calibration.out_of_source import out_of_source
    from calibration.summarize import write_results_page

    data_dir, runs, weights = Path(s["data_dir"]), Path(s["runs"]), Path(s["weights"])
    split = Split.of_runs(runs)
    card: dict = {}
    timings: dict[str, float] = {}

    def step(name: str, sections: dict) -> None:
        superseded = sorted(set(sections) & set(card) - {"files"})
        print(f"== {name}: {', '.join(sections)}" + (f" (supersedes {', '.join(superseded)})" if superseded else ""),
              flush=True)
        card.update(merged(card, sections))

    def clock(name: str, started: float) -> None:
        timings[name] = round(time.time() - started, 1)

    started = time.time()
    print(f"== split: {split.text()} (from {runs}/*/history.json)", flush=True)
    step("evaluate", evaluate(data_dir, runs, weights, split, s["version"], s["max_images"], s["use_cache"]))
    clock("evaluate", started)
    started = time.time()
    step("dermoscopy_check", dermoscopy_check(data_dir, weights, card, split, Path(s["dermoscopy_features"]),
                                              s["dermoscopy_seed"], s["max_images"]))
    clock("dermoscopy_check", started)
    started = time.time()
    step("out_of_source", out_of_source(data_dir, weights, card, split, Path(s["oos_out"]), s["max_images"]))
    clock("out_of_source", started)
    started = time.time()
    step("image_quality", {"image_quality": image_quality(data_dir, weights, card, split, Path(s["oos_out"]) /
                                                          "predictions.csv", s["max_images"],
                                                          measures_root=Path(s["measures"]))})
    typed = card_from_dict(card, f"the card being built for {weights}")
    write_triage_column(weights, typed, Path(s["measures"]))
    clock("image_quality", started)
    started = time.time()
    noise_band_file(data_dir, Analyzer.load(weights, card=typed), split, weights / "followup_noise.json",
                    s["followup_pairs"], seed=s["followup_seed"],
                    command="python -m calibration.calibrate " + " ".join(sys.argv[1:]))
    clock("followup_noise", started)
    started = time.time()
    card["calibration_seconds"] = timings
    write_card(weights, card)
    write_results_page(card, Path(s["results"]))
    clock("results", started)
    print(f"== wrote {weights / 'model_card.json'} and {s['results']}; seconds per step: {timings}", flush=True)
    return card


def main(argv=None) -> dict:
    return calibrate(settings(argv))


if __name__ == "__main__":
    main()
