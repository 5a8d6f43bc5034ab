"""How detector quality scales with the number of real people trained on: the recipe on the dev videos alone, then
with 100, 400 and all people of an FF++ crop source, then with a photo source too.

    python -m bench.people_scaling --videos ../shared/data/dev/videos --people ../shared/data/dev/ffpp_crops \\
        --photos ../shared/data/dev/utkface --out runs/scaling --recipe cpu --seeds 0 [--steps 0 100 400 all]

Each step runs `training.recipe` on the videos plus a subset of `--people`: the items of N persons drawn at random
(seeded), a person being one value of the source's estimated person-id column (`training/configs/person_ids.yaml`;
`group` where the source has one), their reals with their fakes; the last step adds `--photos`. Subsets are folders
of links named as the source (so the shared crop cache's records apply: nothing is extracted twice), with a
filtered metadata.csv. Every step's grouped OOF figures are read on the same items, the videos of `--videos`: log
loss (weighted to the recipe's target prior) and AUC of the calibrated stacker on all of them and on the
FaceForensics++ originals-with-fakes subset, beside the constant prior. The number of real people of a step counts
the real persons of the videos (their fold groups with a real video), the persons drawn and every photo of
`--photos` (one person each, an upper bound: a photo source without identities may repeat people). Writes
`OUT/scaling.csv`, `OUT/scaling.json` and `OUT/scaling.png` (log loss and AUC against real people, log scale).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from bench.quality import FFPP_PAIRS
from dfdc_core.io import write_atomic
from dfdc_core.metrics import auc, log_loss, prior_weights
from dfdc_core.plots import pyplot, save_figure
from training.data.folds import DEFAULT_PERSON_IDS, read_person_ids
from training.data.sources import METADATA_CSV, collect_items
from training.pipelines.recipe import run_recipe


def person_column(table: pd.DataFrame) -> str:
    """The column that says who is in an item: `group`, else the first estimated person-id column present."""
    if "group" in table.columns and (table["group"] != "").any():
        return "group"
    for rule in read_person_ids(DEFAULT_PERSON_IDS):
        if rule["column"] in table.columns:
            return rule["column"]
    raise ValueError("the --people source has no group or estimated person-id column: persons cannot be drawn")


def people_subset(source: Path, count: int | None, seed: int, where: Path) -> tuple[Path, int]:
    """A folder named as `source` holding links to the items of `count` persons drawn at random (every person for
    None; the draws of one seed are nested) and their filtered metadata.csv; returns it and the number of real
    persons in it."""
    items, _ = collect_items(source)
    table = pd.DataFrame([{"file": item.file, "label": item.label, "group": item.group, "method": item.method,
                           "original": item.original.split("/", 1)[1] if item.original else "", **item.extra}
                          for item in items])
    column = person_column(table)
    persons = sorted(table.loc[table["label"] == 0, column].unique())
    drawn = list(np.random.default_rng(seed).permutation(persons)[:count])  # nested: 100 of a seed are among its 400
    chosen = table[table[column].isin(drawn)]
    folder = where / source.resolve().name
    for file in chosen["file"]:
        link = folder / file
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to((source / file).resolve())
    chosen = chosen.assign(label=chosen["label"].map({0: "REAL", 1: "FAKE"}))
    write_atomic(folder / METADATA_CSV, chosen.to_csv(index=False))
    return folder, len(drawn)


def video_people(report_dir: Path) -> int:
    """Real persons of the videos: fold groups holding a real video of the videos' source."""
    folds = pd.read_csv(report_dir / "folds.csv", keep_default_na=False)
    items = pd.read_csv(report_dir / "oof_videos.csv", keep_default_na=False)
    videos = set(items.loc[~items["video"].str.contains("/"), "video"])
    reals = folds[folds["video"].isin(videos) & (folds["label"] == 0)]
    return int(reals["group"].nunique())


def step_rows(run: Path, videos: set[str], target_prior: float) -> dict[str, float]:
    """The stacker's OOF figures of one run on `videos` and on their FF++ pairs, with the constant prior's."""
    items = pd.read_csv(run / "oof_videos.csv", keep_default_na=False)
    rows = {}
    for name, chosen in (("all", items[items["video"].isin(videos)]),
                         ("ffpp_pairs", items[items["video"].isin(videos) & items["video"].str.fullmatch(FFPP_PAIRS)])):
        y, p = chosen["label"].to_numpy(), chosen["calibrated"].to_numpy()
        weights = prior_weights(y, target_prior)
        rows.update({f"{name}_n": len(chosen), f"{name}_log_loss": log_loss(y, p, weights=weights),
                     f"{name}_auc": auc(y, p),
                     f"{name}_constant": log_loss(y, np.full(len(y), target_prior), weights=weights)})
    return rows


def plot(table: pd.DataFrame, path: Path) -> Path:
    means = table.groupby("step", sort=False).agg(people=("real_people", "first"), **{
        column: (column, "mean") for column in ("all_log_loss", "all_auc", "ffpp_pairs_log_loss", "ffpp_pairs_auc")})
    figure, (losses, aucs) = pyplot().subplots(1, 2, figsize=(10, 4))
    for prefix, label in (("all", "all dev videos"), ("ffpp_pairs", "FF++ originals with their fakes")):
        losses.plot(means["people"], means[f"{prefix}_log_loss"], marker="o", label=label)
        aucs.plot(means["people"], means[f"{prefix}_auc"], marker="o", label=label)
    losses.axhline(float(np.log(2)), ls="--", color="grey", label="constant 0.5")
    aucs.axhline(0.5, ls="--", color="grey")
    for axis, name in ((losses, "log loss at the 0.5 prior (stacker, grouped OOF)"), (aucs, "AUC")):
        axis.set(xscale="log", xlabel="real people trained on", title=name)
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.people_scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, required=True, help="the labelled videos scored at every step")
    parser.add_argument("--people", type=Path, required=True, help="a source of many persons (FF++ crops)")
    parser.add_argument("--photos", type=Path, default=None, help="a photo source added at the last step")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", nargs="+", default=["0", "100", "400", "all"],
                        help="persons of --people per step (all: every one)")
    args = parser.parse_args(argv)
    steps = [(step, None if step == "all" else int(step)) for step in args.steps]
    if args.photos is not None:
        steps.append(("all+photos", None))
    videos = {item.video for item in collect_items(args.videos)[0]}
    rows = []
    for seed in args.seeds:
        for name, count in steps:
            data, people = [args.videos], 0
            if count != 0:
                subset, people = people_subset(args.people, count, seed, args.out / "sources" / f"{name}_seed{seed}")
                data.append(subset)
            if name == "all+photos":
                data.append(args.photos)
                people += len(collect_items(args.photos)[0])
            run = args.out / f"{name}_seed{seed}"
            report = run_recipe(data, run, args.recipe, seed, crops=args.out / "crops")
            rows.append({"step": name, "seed": seed, "real_people": video_people(run) + people,
                         "minutes": report["minutes"], **step_rows(run, videos, report["target_prior"])})
            table = pd.DataFrame(rows)
            write_atomic(args.out / "scaling.csv", table.to_csv(index=False, float_format="%.4f"))
    write_atomic(args.out / "scaling.json", json.dumps({"recipe": args.recipe, "seeds": args.seeds, "rows": rows},
                                                       indent=1))
    plot(table, args.out / "scaling.png")
    pd.set_option("display.width", 200)
    print(table.round(4).to_string(index=False))
    print(f"wrote {args.out / 'scaling.csv'} and {args.out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
