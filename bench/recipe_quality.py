"""Detector quality of a training recipe: grouped out-of-fold log loss and AUC over several seeds.

    python -m bench.recipe_quality --data ../shared/data/dev/videos [--data MORE ...] --out runs/quality \\
        --recipe cpu --seeds 0 1 2

Runs `python -m training.recipe` once per seed (folds, initialisation and sampling change with it; the face crops
are shared), then prints per seed and as the mean over seeds: the log loss (weighted to the recipe's target
prior, 0.5) and AUC of each model group, the plain mean of groups, the calibrated stacker (nested grouped CV)
and the constant prior, on all OOF videos and on the subset matched by `--subset` (default: the FaceForensics++
YouTube originals with their manipulations, where the same faces appear as real and fake and identity cannot
help), with each seed's wall time. Then, per manipulation method (`training.methods`: the FF++ method a name
carries, else the video's label), the stacker's log loss on that method's videos and the AUC of its fakes against
every real video: which manipulations the detector misses. With several sources, those rows describe the videos
(the calibrator is fitted on every source with reals and fakes), and each source's own figures follow (`source
NAME`: the calibrated score's log loss and AUC on its OOF items, then per `method` of its fakes, with the share of
reals called fake). Writes `OUT/quality.json` and `OUT/quality.csv`. Re-running resumes each seed: after seeds run
side by side (one process per seed, same `--out`), the command with every seed combines them in seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from bench.quality import FFPP_PAIRS, seed_results, summary
from dfdc_core.io import write_atomic
from training.pipelines.recipe import run_recipe


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
