"""`python -m training.recipe`: labelled videos → face crops → group folds → every model on every fold →
out-of-fold predictions → calibrator/stacker → a manifest ready for `python -m kernel --manifest`.

    python -m training.recipe --data DIR [--data DIR ...] --out OUT [--recipe cpu|gpu|FILE.yaml] [--seed N]
                              [--crops DIR]

Each DIR is a source `training/extract_faces.py` reads (DFDC parts, one folder with metadata.json, or a folder with
real/ and/or fake/ images or videos and an optional metadata.csv); every source goes into one crop cache, one index
(with a `source` column) and one set of group folds. A recipe (training/recipes/*.yaml) names the frames sampled,
the folds, the calibration target and the models; each model's keys override `train`, which overrides
training/configs/default.yaml.

Outputs in OUT: folds.csv, configs/, runs/<model>_fold<k>/ (weights, metrics, oof.csv), stacker.json,
weights_manifest.json (every fold model, grouped by recipe model, and the stacker), oof_videos.csv (per video:
label, cluster, each model group's OOF score, the calibrated nested-CV score), report.json and report.png.
Every step resumes: extraction skips finished videos, a fold with its OOF file is done, a fold with a checkpoint
continues from it. Crops are cached in `--crops` (default OUT/crops), so seeds can share them.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.pipelines.recipe import run_recipe

log = logging.getLogger("training.recipe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a source: labelled videos (DFDC layout) or real/ and/or fake/ images or videos with an "
                        "optional metadata.csv; repeat for several sources")
    parser.add_argument("--out", type=Path, required=True, help="folder for everything the recipe makes")
    parser.add_argument("--recipe", default="cpu", help="cpu, gpu or a recipe YAML file")
    parser.add_argument("--seed", type=int, default=0, help="folds, initialisation and sampling")
    parser.add_argument("--crops", type=Path, default=None, help="face-crop cache (default OUT/crops)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_recipe(args.data, args.out, args.recipe, args.seed, args.crops, args.device)
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
