"""Which frame→video aggregation, and does horizontal-flip TTA pay? Measured on recipe runs' OOF predictions.

    python -m bench.aggregation_choice --runs runs/quality/seed0 runs/quality/seed1 runs/quality/seed2 [--tta]

For each run (a `training.recipe` output folder, one per seed) and each rule of `dfdc_core.aggregate.STRATEGIES`,
fits the calibrator on the run's OOF files exactly as the recipe does and prints the nested grouped-CV log loss
(weighted to the target prior) and AUC of the calibrated score and of the raw mean of models; then the mean over
runs. With `--tta` each fold model re-predicts its validation crops with the kernel's horizontal-flip test-time
augmentation (`oof_hflip.csv` beside each `oof.csv`, kept for reruns) and the same table is made from those.
Writes `aggregation_choice.csv` in the first run's parent folder.
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
from ensemble.stacking import fit_stacker
from training.data.dataset import CropDataset
from training.engine.evaluate import crop_fake_probs, load_fold_rows, predict_logits


def flipped_oof(run: Path) -> Path:
    """`oof_hflip.csv` of one fold model: its validation crops re-predicted with horizontal-flip TTA."""
    path = run / "oof_hflip.csv"
    if path.is_file():
        return path
    config = yaml.safe_load((run / "config.yaml").read_text())
    _, val = load_fold_rows(config, config["fold"])
    manifest = Path(config["manifest"])
    spec = next(s for s in Manifest.load(manifest).models if s.name == config["name"])
    dataset = CropDataset(val, Path(config["crops"]), spec.input_size, spec.mean, spec.std)
    logits = predict_logits(load_classifier(spec), DataLoader(dataset, batch_size=64), torch.device("cpu"), True)
    oof = pd.read_csv(run / "oof.csv")
    oof["prob"] = crop_fake_probs(logits, config)
    write_atomic(path, oof.to_csv(index=False, float_format="%.6f"))
    return path


def measure(out: Path, tta: bool) -> list[dict]:
    """One recipe run's rows: every aggregation rule, calibrated and raw mean."""
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    runs = sorted(p.parent for p in (out / "runs").glob("*/oof.csv"))
    oofs = [flipped_oof(run) if tta else run / "oof.csv" for run in runs]
    rows = []
    for strategy in STRATEGIES:
        _, report, _ = fit_stacker(oofs, out / "folds.csv", strategy, target_prior=recipe["target_prior"],
                                   stats=tuple(recipe["features"]))
        by_name = {row["name"]: row for row in report}
        for name in ("stacker (nested CV)", "mean of models"):
            rows.append({"run": out.name, "tta_hflip": tta, "aggregation": strategy, "score": name,
                         "log_loss": by_name[name]["log_loss"], "auc": by_name[name]["auc"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation_choice", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="training.recipe output folders")
    parser.add_argument("--tta", action="store_true", help="also measure horizontal-flip TTA")
    args = parser.parse_args(argv)
    rows = [row for out in args.runs for tta in ((False, True) if args.tta else (False,))
            for row in measure(out, tta)]
    table = pd.DataFrame(rows)
    write_atomic(args.runs[0].parent / "aggregation_choice.csv", table.to_csv(index=False, float_format="%.4f"))
    pd.set_option("display.width", 160)
    print(table.pivot_table(index=["score", "tta_hflip", "aggregation"], columns="run",
                            values=["log_loss", "auc"]).round(4).to_string())
    print("\nmean over runs:")
    print(table.groupby(["score", "tta_hflip", "aggregation"])[["log_loss", "auc"]].mean().round(4).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
