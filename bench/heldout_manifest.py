"""How the manifest of `training.recipe` scores videos it has never seen: outer group folds around the whole recipe.

    python -m bench.heldout_manifest --data ../shared/data/dev/videos --out runs/heldout --recipe cpu --seed 0

The labelled videos are split into `--outer` group folds (a fake always with its original, the FaceForensics++ name
link rules applied). For each outer fold the whole recipe runs on the other folds' videos (its own inner folds, OOF
predictions and stacker), and the kernel (`kernel.predict`) scores the held-out fold's videos with the manifest the
recipe wrote: every fold model, the frame→video rule and the stacker, as on Kaggle. Printed, per outer fold and
pooled: the held-out log loss (weighted to the recipe's target prior) and AUC beside what the recipe's own report
promised (its stacker's nested-CV figures on its training videos) and the constant prior, on all videos and on the
`--subset`. Each recipe trains on (outer - 1) / outer of the videos, so the held-out figures are a little
pessimistic for a manifest trained on all of them. Videos in which the extraction finds no face are in no outer
fold (the kernel would give them the prior).

Face crops are extracted once into OUT/crops and shared. `--outer-folds` runs some outer folds only, so two
processes can share a machine; the command with every outer fold then combines them, resuming what is done.
Writes OUT/heldout.csv (one row per held-out video) and OUT/heldout.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.quality import FFPP_PAIRS, in_subset
from dfdc_core.io import write_atomic
from dfdc_core.metrics import auc, log_loss, prior_weights
from kernel import predict
from kernel.config import load_config
from training.data.extract_faces import run_extraction
from training.data.sources import find_parts
from training.pipelines.recipe import make_folds, read_recipe, run_recipe


def link_part(part: Path, videos: set[str], where: Path) -> None:
    """`where` as a copy of the DFDC part `part` holding only `videos`: their metadata entries, files linked."""
    metadata = json.loads((part / "metadata.json").read_text())
    kept = {name: entry for name, entry in metadata.items() if name in videos}
    where.mkdir(parents=True, exist_ok=True)
    for name in kept:
        link = where / name
        if not link.is_symlink():
            link.symlink_to((part / name).resolve())
    write_atomic(where / "metadata.json", json.dumps(kept, indent=1))


def training_data(data: Path, videos: set[str], where: Path) -> Path:
    """A `--data` folder laid out as `data` (one part, or a folder of parts named as in `data`) with only `videos`;
    part names are kept, so the shared crops' extraction records apply and the recipe trains on these videos only."""
    parts = find_parts(data)
    root = where / data.name if parts == [data] else where
    for part in parts:
        link_part(part, videos, root if parts == [data] else root / part.name)
    return root


def heldout_videos(data: Path, videos: set[str], where: Path) -> Path:
    """A folder of links to the files of `videos` (what the kernel is pointed at)."""
    where.mkdir(parents=True, exist_ok=True)
    for part in find_parts(data):
        for name in videos:
            if (part / name).is_file() and not (where / name).is_symlink():
                (where / name).symlink_to((part / name).resolve())
    return where


def run_outer_fold(data: Path, out: Path, recipe: str, seed: int, folds: pd.DataFrame, fold: int,
                   frames: int, device: str) -> pd.DataFrame:
    """Train the recipe without outer fold `fold`, score that fold with the kernel; one row per held-out video."""
    where = out / f"outer{fold}"
    train = set(folds.loc[folds["fold"] != fold, "video"])
    held = folds[folds["fold"] == fold]
    run_recipe(training_data(data, train, where / "data"), where / "recipe", recipe, seed, crops=out / "crops",
               device=device)
    submission = where / "submission.csv"
    if not submission.is_file():
        predict(heldout_videos(data, set(held["video"]), where / "heldout"), None,
                where / "recipe" / "weights_manifest.json", submission, device, load_config(frames=frames))
    scores = pd.read_csv(submission).rename(columns={"filename": "video", "label": "heldout"})
    return held[["video", "label"]].merge(scores, on="video", how="left").assign(outer_fold=fold)


def promised(out: Path, fold: int, subset: str | None, target_prior: float) -> float:
    """What outer fold `fold`'s recipe promised: its stacker's nested-CV log loss (weighted to the prior) on its own
    OOF videos, all of them or those `subset` matches (NaN for none)."""
    videos = pd.read_csv(out / f"outer{fold}" / "recipe" / "oof_videos.csv")
    if subset is not None:
        videos = videos[in_subset(videos["video"], subset)]
    if videos.empty:
        return float("nan")
    return log_loss(videos["label"], videos["calibrated"], weights=prior_weights(videos["label"], target_prior))


def score_rows(videos: pd.DataFrame, target_prior: float) -> dict[str, float]:
    """Held-out log loss (weighted to the prior) and AUC of `videos`, with the constant prior's log loss; NaN
    figures for no videos (an outer fold without any of the subset)."""
    if videos.empty:
        return {"n": 0, "log_loss": float("nan"), "auc": float("nan"), "constant": float("nan")}
    weights = prior_weights(videos["label"], target_prior)
    return {"n": len(videos), "log_loss": log_loss(videos["label"], videos["heldout"], weights=weights),
            "auc": auc(videos["label"], videos["heldout"]),
            "constant": log_loss(videos["label"], np.full(len(videos), target_prior), weights=weights)}


def summary(table: pd.DataFrame, out: Path, folds: list[int], subset: str, target_prior: float) -> list[dict]:
    """Rows per outer fold and pooled (the promise: the mean of the folds'), on all held-out videos and on the
    subset."""
    rows = []
    for videos_name, regex in (("all", None), ("subset", subset)):
        videos = table if regex is None else table[in_subset(table["video"], regex)]
        promises = {fold: promised(out, fold, regex, target_prior) for fold in folds}
        for fold in folds:
            rows.append({"videos": videos_name, "outer_fold": str(fold), "promised": promises[fold],
                         **score_rows(videos[videos["outer_fold"] == fold], target_prior)})
        pooled_promise = float(np.nanmean(list(promises.values())))
        rows.append({"videos": videos_name, "outer_fold": "pooled", "promised": pooled_promise,
                     **score_rows(videos, target_prior)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.heldout_manifest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="labelled videos, DFDC layout")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="the outer folds' and every recipe's seed")
    parser.add_argument("--outer", type=int, default=4, help="outer group folds")
    parser.add_argument("--outer-folds", type=int, nargs="+", default=None, help="run these outer folds only")
    parser.add_argument("--subset", default=FFPP_PAIRS, help="regex over video names for the subset figures")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training and the kernel")
    args = parser.parse_args(argv)
    chosen = args.outer_folds if args.outer_folds is not None else list(range(args.outer))
    if not set(chosen) <= set(range(args.outer)):
        parser.error(f"--outer-folds {chosen}: choose among 0 to {args.outer - 1}")
    recipe = read_recipe(args.recipe)
    run_extraction(args.data, args.out / "crops", recipe["frames"])
    folds = make_folds(args.out / "crops", args.out / "outer", args.outer, args.seed)
    if folds["fold"].nunique() != args.outer:
        parser.error(f"{args.out / 'outer' / 'folds.csv'} holds {folds['fold'].nunique()} outer folds, not --outer "
                     f"{args.outer}; use a new --out")
    table = pd.concat([run_outer_fold(args.data, args.out, args.recipe, args.seed, folds, fold, recipe["frames"],
                                      args.device) for fold in chosen], ignore_index=True)
    rows = summary(table, args.out, chosen, args.subset, recipe["target_prior"])
    write_atomic(args.out / "heldout.csv", table.to_csv(index=False, float_format="%.6f"))
    write_atomic(args.out / "heldout.json", json.dumps({"recipe": args.recipe, "seed": args.seed, "outer": args.outer,
                                                        "outer_folds": chosen, "rows": rows}, indent=1))
    print("\nheld-out videos scored by the kernel with the manifest trained without them (log loss weighted to the "
          "target prior), beside the stacker's nested-CV log loss on the same recipe's own videos ('promised'):")
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
