"""What averaging several models buys: the OOF predictions of finished recipe runs averaged into one run folder.

    python -m bench.oof_ensemble --runs runs/quality/seed0 runs/quality/seed1 runs/quality/seed2 \\
        --out runs/ensemble/seed0
    python -m bench.recipe_quality --data SOURCE [--data MORE ...] --out runs/ensemble --recipe cpu --seeds 0

Every run (a `training.recipe` output folder) must have scored the same crops with the same model groups; their
folds may differ (other seeds), since each run's prediction of a crop comes from a model that never trained on it,
and so does their average. Each crop's prediction in `OUT` is the mean logit over the runs, per model group, written
into a copy of the first run's folder (its folds, configs and `oof.csv` files); no weights are copied. Re-scoring
`OUT` with `bench.recipe_quality` (its seed folder name, the same `--data` and `--recipe`) refits the stacker on the
averaged predictions and reports every source as for a trained seed: the figures of an ensemble of the runs, at the
runs' training cost and that many times the kernel's classify step.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc_core.aggregate import logit, sigmoid
from dfdc_core.io import write_atomic

KEY = ["video", "frame", "person", "group"]
COPIED = ("folds.csv", "folds_left_out.csv", "recipe.yaml", "weights_manifest.json")
LOGIT_CAP = 13.8  # |logit| of each run's prediction before averaging: P(fake) within [1e-6, 1 - 1e-6]


def oof_files(run: Path) -> list[Path]:
    """The fold models' `oof.csv` files of one recipe run; a clear error when it has none."""
    files = sorted((run / "runs").glob("*/oof.csv"))
    if not files:
        raise ValueError(f"{run}: no runs/*/oof.csv; pass finished training.recipe output folders (e.g. "
                         "runs/quality/seed0)")
    return files


def run_predictions(run: Path) -> pd.DataFrame:
    """Every OOF crop prediction of one run, one row per (video, frame, person, group)."""
    table = pd.concat([pd.read_csv(path, dtype={"video": str, "group": str}) for path in oof_files(run)],
                      ignore_index=True)
    if table.duplicated(KEY).any():
        raise ValueError(f"{run}: a crop is predicted twice by one model group; is a fold model's run listed twice?")
    return table


def mean_logits(runs: list[Path]) -> pd.Series:
    """Each crop's mean logit over the runs, indexed by KEY; refuses runs that scored other crops or labels."""
    first = run_predictions(runs[0]).set_index(KEY)
    logits = []
    for run in runs:
        own = first if run == runs[0] else run_predictions(run).set_index(KEY)
        table = first[["label"]].join(own[["prob", "label"]].rename(columns={"label": "label_run"}))
        if table["prob"].isna().any() or len(own) != len(first):
            missing = table.index[table["prob"].isna()][:3].tolist()
            raise ValueError(f"{run} did not score the crops of {runs[0]} (e.g. {missing}); average runs of the "
                             "same sources and model groups")
        if not table["label"].eq(table["label_run"]).all():
            raise ValueError(f"{run}: labels differ from {runs[0]}'s; average runs of the same crop cache")
        logits.append(logit(table["prob"].to_numpy(), bound=LOGIT_CAP))
    return pd.Series(np.mean(logits, axis=0), index=first.index)


def write_ensemble(runs: list[Path], out: Path) -> list[Path]:
    """`out`: the first run's folder with every `oof.csv` holding the runs' mean predictions; returns those files."""
    if out.exists():
        raise ValueError(f"{out} exists; pass a new --out folder (it becomes one seed folder of bench.recipe_quality)")
    averaged = mean_logits(runs)
    out.mkdir(parents=True)
    for name in COPIED:
        if (runs[0] / name).is_file():
            shutil.copy2(runs[0] / name, out / name)
    if (runs[0] / "configs").is_dir():
        shutil.copytree(runs[0] / "configs", out / "configs")
    written = []
    for path in oof_files(runs[0]):
        oof = pd.read_csv(path, dtype={"video": str, "group": str})
        oof["prob"] = sigmoid(averaged.loc[pd.MultiIndex.from_frame(oof[KEY])].to_numpy())
        target = out / "runs" / path.parent.name / "oof.csv"
        target.parent.mkdir(parents=True)
        write_atomic(target, oof.to_csv(index=False, float_format="%.6f"))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oof_ensemble", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished training.recipe output folders")
    parser.add_argument("--out", type=Path, required=True, help="a new folder named like a seed folder (e.g. seed0)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("--runs needs at least two run folders to average")
    written = write_ensemble(args.runs, args.out)
    print(f"{len(written)} OOF files of {len(args.runs)} runs averaged into {args.out}; score them with "
          f"python -m bench.recipe_quality --out {args.out.parent} --seeds {args.out.name.removeprefix('seed')} "
          "and the runs' --data and --recipe")
    return 0


if __name__ == "__main__":
    sys.exit(main())
