"""`python -m ensemble.stack`: fit the calibrator / stacker on out-of-fold predictions, export it as JSON.

    python -m ensemble.stack --oof runs/*/oof.csv --folds crops/folds.csv --out stacker.json [--target-prior 0.5]

One logistic regression on per-video features of each model group (`dfdc_core.aggregate.video_features`, the
function the kernel uses at inference; by default the logit of the group's video score). With one group it is
Platt scaling, a calibrator; with several, a stacker. It is fitted with class weights that give the fakes a
share of `--target-prior` (0.5: the DFDC test sets' share, against 83.9 % in the training set), so its
intercept is right for the test set, not for the OOF videos. C is chosen by grouped cross-validation (groups:
the original clusters of the folds CSV); the reported figures come from a nested grouped cross-validation (C
chosen inside each outer fold), so the verdict "pays off" is not measured on the data C was chosen on.
Standardisation is folded into the exported coefficients: the kernel applies the JSON with one dot product.

When the folds CSV names several sources (`source` column), the fit uses the items of those that hold reals and fakes
and leaves out a real-only or fake-only one (face photos, say), as `training.recipe` does; `--fit-on every` keeps them.

With several groups the JSON also carries `variants`: the same fit on every proper subset of the groups (each with
its groups, feature names, coefficients, intercept, C and nested-CV log loss), which the kernel switches to when the
time budget makes it drop a group's models (`kernel.budget`); `--no-variants` leaves them out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dfdc_core.aggregate import DEFAULT_FEATURES, FEATURE_STATS, STRATEGIES, Stacker
from dfdc_core.config import SettingsError
from dfdc_core.io import write_atomic
from ensemble.stacking import (
    OOFError,
    calibration_items,
    fit_stacker,
    format_report,
    verdict,
)
from kernel.checks import check_out_file

FIT_ON = ("two-class-sources", "every")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oof", type=Path, nargs="+", required=True, help="oof.csv files of train_fold.py")
    parser.add_argument("--folds", type=Path, required=True, help="folds.csv of training/folds.py (clusters)")
    parser.add_argument("--out", type=Path, required=True, help="stacker JSON to write")
    parser.add_argument("--aggregation", choices=sorted(STRATEGIES), default="mean")
    parser.add_argument("--target-prior", type=float, default=0.5, help="share of fakes to calibrate to")
    parser.add_argument("--features", nargs="+", default=list(DEFAULT_FEATURES), help=f"of {list(FEATURE_STATS)}")
    parser.add_argument("--splits", type=int, default=5, help="grouped CV folds")
    parser.add_argument("--fit-on", choices=FIT_ON, default=FIT_ON[0],
                        help="the items the fit uses: those of the sources holding both classes (default) or every one")
    parser.add_argument("--no-variants", action="store_true",
                        help="no variants for subsets of the groups (the kernel then falls back to the plain mean "
                             "when its time budget drops a whole group)")
    args = parser.parse_args(argv)
    try:
        check_out_file(args.out, [*args.oof, args.folds], "stacker.json")
        if args.splits < 2:
            raise OOFError(f"--splits {args.splits}: grouped cross-validation needs at least 2")
        fitted_on = calibration_items(args.folds) if args.fit_on == FIT_ON[0] else None
        stacker, report, table = fit_stacker(args.oof, args.folds, args.aggregation, args.splits,
                                             target_prior=args.target_prior, stats=tuple(args.features),
                                             variants=not args.no_variants, only=fitted_on)
    except (OOFError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_atomic(args.out, json.dumps(stacker, indent=1))
    Stacker.from_json(args.out)
    if fitted_on is not None:
        print(f"fitted on the {len(fitted_on)} items of the sources holding reals and fakes; real-only and fake-only "
              "sources left out (--fit-on every keeps them)")
    print(f"{stacker['videos']} videos ({stacker['oof_prior']:.1%} fake), groups {stacker['groups']}, "
          f"{stacker['kind']}, C = {stacker['C']:.4g}, calibrated to {args.target_prior:.0%} fakes")
    print(format_report(report, args.target_prior, stacker["oof_prior"]))
    for variant in stacker.get("variants", []):
        print(f"variant without {sorted(set(stacker['groups']) - set(variant['groups']))}: log loss "
              f"{variant['log_loss']:.4f} (nested CV)")
    print(f"{verdict(report)}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
