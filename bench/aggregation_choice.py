"""Which frame→video aggregation, does horizontal-flip TTA pay, and which items should the calibrator be fitted on?
Measured on recipe runs' OOF predictions.

    python -m bench.aggregation_choice --runs runs/quality/seed0 runs/quality/seed1 runs/quality/seed2 [--tta] \\
        [--fit-on recipe videos]

For each run (a `training.recipe` output folder, one per seed) and each rule of `dfdc_core.aggregate.STRATEGIES`,
fits the calibrator on the run's OOF files exactly as the recipe does (`--fit-on recipe`: every source holding reals
and fakes; `videos`: the videos alone, the rule until 2026-12-06) and prints, on the videos the recipe reports, the
nested grouped-CV log loss (weighted to the target prior) and AUC of the calibrated score and of the raw mean of
models; then the mean over runs; `tta_hflip` says how the OOF crops were scored (the runs' own setting: the `cpu`
recipe's is true since 2026-12-08). With `--tta` the table is made both with and without the kernel's horizontal-flip
test-time augmentation: each fold model re-predicts its validation crops the way its `oof.csv` was not scored
(`oof_hflip.csv` or `oof_plain.csv` beside it, kept for reruns). Writes `aggregation_choice.csv` in the first run's
parent folder.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader

from dfdc_core.aggregate import STRATEGIES
from dfdc_core.io import write_atomic
from dfdc_core.manifest import Manifest
from dfdc_core.models import load_classifier
from ensemble.stacking import calibration_items
from training.data.dataset import CropDataset
from training.engine.evaluate import crop_fake_probs, load_fold_rows, predict_logits
from training.pipelines.recipe import calibrated_items, reported_items

FIT_SETS = ("recipe", "videos")


def oof_scored(run: Path, hflip: bool) -> Path:
    """One fold model's OOF predictions scored with (or without) horizontal-flip TTA: its `oof.csv` when training
    scored it so (its config's `tta_hflip`), else its validation crops re-predicted (`oof_hflip.csv` or
    `oof_plain.csv`, kept for reruns)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    if bool(config.get("tta_hflip", False)) == hflip:
        return run / "oof.csv"
    path = run / ("oof_hflip.csv" if hflip else "oof_plain.csv")
    if path.is_file():
        return path
    _, val = load_fold_rows(config, config["fold"])
    manifest = Path(config["manifest"])
    spec = next(s for s in Manifest.load(manifest).models if s.name == config["name"])
    dataset = CropDataset(val, Path(config["crops"]), spec.input_size, spec.mean, spec.std)
    logits = predict_logits(load_classifier(spec), DataLoader(dataset, batch_size=64), torch.device("cpu"), hflip)
    oof = pd.read_csv(run / "oof.csv")
    oof["prob"] = crop_fake_probs(logits, config)
    write_atomic(path, oof.to_csv(index=False, float_format="%.6f"))
    return path


def measure(out: Path, tta: bool, fit_on: str) -> list[dict]:
    """One recipe run's rows: every aggregation rule, calibrated and raw mean, on the videos the recipe reports."""
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    runs = sorted(p.parent for p in (out / "runs").glob("*/oof.csv"))
    oofs = [oof_scored(run, tta) for run in runs]
    folds = pd.read_csv(out / "folds.csv", dtype={"video": str, "source": str}, keep_default_na=False)
    reported = reported_items(folds)
    fitted = calibration_items(out / "folds.csv") if fit_on == "recipe" else reported
    rows = []
    for strategy in STRATEGIES:
        _, report, _, _ = calibrated_items(oofs, out / "folds.csv", {**recipe, "aggregation": strategy}, fitted,
                                           reported)
        by_name = {row["name"]: row for row in report}
        for name in ("stacker (nested CV)", "mean of models"):
            rows.append({"run": f"{out.parent.name}/{out.name}", "tta_hflip": tta, "fit_on": fit_on,
                         "aggregation": strategy, "score": name, "log_loss": by_name[name]["log_loss"],
                         "auc": by_name[name]["auc"]})
    return rows


def runs_tta(out: Path) -> bool:
    """Whether a recipe run's fold models scored their OOF crops with flip TTA (their configs' `tta_hflip`)."""
    return any(bool(yaml.safe_load(path.read_text()).get("tta_hflip", False))
               for path in (out / "runs").glob("*/config.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation_choice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="training.recipe output folders")
    parser.add_argument("--tta", action="store_true", help="measure with and without horizontal-flip TTA")
    parser.add_argument("--fit-on", nargs="+", choices=FIT_SETS, default=["recipe"],
                        help="the items the calibrator is fitted on: the recipe's rule, or the videos alone")
    args = parser.parse_args(argv)
    rows = [row for out in args.runs for tta in ((False, True) if args.tta else (runs_tta(out),))
            for fit_on in args.fit_on for row in measure(out, tta, fit_on)]
    table = pd.DataFrame(rows)
    write_atomic(args.runs[0].parent / "aggregation_choice.csv", table.to_csv(index=False, float_format="%.4f"))
    pd.set_option("display.width", 160)
    keys = ["score", "tta_hflip", "fit_on", "aggregation"]
    print(table.pivot_table(index=keys, columns="run", values=["log_loss", "auc"]).round(4).to_string())
    print("\nmean over runs:")
    print(table.groupby(keys)[["log_loss", "auc"]].mean().round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
