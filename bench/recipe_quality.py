"""Detector quality of a training recipe: grouped out-of-fold log loss and AUC over several seeds.

    python -m bench.recipe_quality --data ../shared/data/dev/videos [--data MORE ...] --out runs/quality \
        --recipe cpu --seeds 0 1 2

Runs `python -m training.recipe` once per seed (folds, initialisation and sampling change with it; the face crops
are shared), then prints per seed and as the mean over seeds: the log loss (weighted to the recipe's target
prior, 0.5) and AUC of each model group, the plain mean of groups, the calibrated stacker (nested grouped CV)
and the constant prior, on all OOF videos and on the subset matched by `--subset` (default: the FaceForensics++
YouTube originals with their manipulations, where the same faces appear as real and fake and identity cannot
help), with each seed's wall time. Then, per manipulation method (`training.methods`: the FF++ method a name
carries, else the video's label), the stacker's log loss on that method's videos and the AUC of its fakes against
every real video: which manipulations the detector misses. With several sources, the videos are the items the
calibrator was fitted on, and each source's own figures follow (`source NAME`: the calibrated score's log loss and
AUC on its OOF items, then per `method` of its fakes, with the share of reals called fake). Writes `OUT/quality.json` and `OUT/quality.csv`.
Re-running resumes each seed: after seeds run side by side (one process per seed, same `--out`), the command
with every seed combines them in seconds.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc_core.io import write_atomic
from dfdc_core.metrics import auc, log_loss, prior_weights
from dfdc_core.video import is_image
from training.methods import REAL, method_of
from training.workflow import run_recipe

FFPP_PAIRS = r"ffc\d+_(yt|df|f2f|fs|nt)_.*"


def subset_rows(videos: pd.DataFrame, target_prior: float) -> list[dict[str, float | str]]:
    """Log loss (prior-weighted) and AUC of each score column of `oof_videos.csv` rows, and the constant."""
    y = videos["label"].to_numpy()
    weights = prior_weights(y, target_prior)
    groups = [c for c in videos.columns if c.startswith("score_")]
    columns = {f"model {c.removeprefix('score_')}": videos[c] for c in groups}
    columns["mean of models"] = videos[groups].mean(axis=1)
    columns["stacker (nested CV)"] = videos["calibrated"]
    columns["constant prior"] = pd.Series(np.full(len(y), target_prior))
    return [{"name": name, "log_loss": log_loss(y, probs, weights=weights), "auc": auc(y, probs)}
            for name, probs in columns.items()]


def method_rows(videos: pd.DataFrame) -> list[dict[str, float | str]]:
    """Per method of `oof_videos.csv` rows: the stacker's log loss on its videos and, for a fake method, the AUC
    of its videos against every real one (NaN without reals)."""
    methods = pd.Series([method_of(video, label, unmatched="label")
                         for video, label in zip(videos["video"], videos["label"])])
    reals = videos[methods.eq(REAL).to_numpy()]
    rows = []
    for method in sorted(methods.unique(), key=lambda name: (name != REAL, name)):
        chosen = videos[methods.eq(method).to_numpy()]
        scored = chosen if method == REAL else pd.concat([reals, chosen])
        rows.append({"name": method, "n": len(chosen),
                     "log_loss": log_loss(chosen["label"], chosen["calibrated"]),
                     "auc": auc(scored["label"], scored["calibrated"])})
    return rows


def in_subset(names: pd.Series, subset: str) -> np.ndarray:
    """Which video names the `subset` regex matches whole."""
    return names.map(lambda name: re.fullmatch(subset, name) is not None).to_numpy(dtype=bool)


def seed_results(out: Path, seed: int, subset: str) -> list[dict]:
    """One seed's rows: all OOF videos (the recipe's report), the subset and each method (the stacker's)."""
    report = json.loads((out / "report.json").read_text())
    videos = pd.read_csv(out / "oof_videos.csv", keep_default_na=False)
    if "source" in videos.columns:  # the items the calibrator was fitted on (the videos, beside stills)
        fitted = videos["video"].map(lambda name: not is_image(name))
        videos = videos[fitted] if fitted.any() else videos
    chosen = videos[in_subset(videos["video"], subset)].reset_index(drop=True)
    rows = [{"seed": seed, "videos": "all", "n": report["videos"], "minutes": report["minutes"], **row}
            for row in report["rows"]]
    rows += [{"seed": seed, "videos": "subset", "n": len(chosen), "minutes": report["minutes"], **row}
             for row in subset_rows(chosen, report["target_prior"])]
    rows += [{"seed": seed, "videos": "by method", "minutes": report["minutes"], **row} for row in method_rows(videos)]
    rows += [{"seed": seed, "videos": f"source {row['source']}", "name": row["method"] or "stacker", "n": row["n"],
              "minutes": report["minutes"], "log_loss": row["log_loss"], "auc": row["auc"],
              "constant": row["constant"], "reals_called_fake": row["reals_called_fake"]}
             for row in report.get("sources", [])]
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread over seeds of each (videos, name) row."""
    grouped = table.groupby(["videos", "name"], sort=False)
    extra = {"reals_called_fake": ("reals_called_fake", "mean")} if "reals_called_fake" in table.columns else {}
    return grouped.agg(log_loss=("log_loss", "mean"), log_loss_sd=("log_loss", "std"), auc=("auc", "mean"),
                       auc_sd=("auc", "std"), worst_log_loss=("log_loss", "max"), n=("n", "first"),
                       **extra).reset_index()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipe_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a source (repeat for several, as training.recipe takes them)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--subset", default=FFPP_PAIRS, help="regex over video names for the subset figures")
    args = parser.parse_args(argv)
    rows = []
    for seed in args.seeds:
        seed_out = args.out / f"seed{seed}"
        run_recipe(args.data, seed_out, args.recipe, seed, crops=args.out / "crops")
        rows += seed_results(seed_out, seed, args.subset)
    table = pd.DataFrame(rows)
    means = summary(table)
    write_atomic(args.out / "quality.csv", table.to_csv(index=False, float_format="%.4f"))
    write_atomic(args.out / "quality.json", json.dumps({"recipe": args.recipe, "seeds": args.seeds,
                                                        "subset": args.subset, "rows": rows,
                                                        "mean": means.to_dict(orient="records")}, indent=1))
    pd.set_option("display.width", 160)
    print("\nper seed (log loss weighted to the target prior; AUC):")
    print(table.pivot_table(index=["videos", "name"], columns="seed", values=["log_loss", "auc"], sort=False)
          .round(4).to_string())
    print("\nmean over seeds:")
    print(means.round(4).to_string(index=False))
    minutes = table.groupby("seed")["minutes"].first()
    print("\nwall time (minutes over every run of the recipe in the seed's folder) per seed: "
          + ", ".join(f"{seed}: {value:.1f}" for seed, value in minutes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
