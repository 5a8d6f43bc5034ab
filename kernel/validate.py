"""`python -m kernel.validate`: score a submission against DFDC `metadata.json` labels.

Prints the competition log loss (same clipping as the kernel), AUC and accuracy; with `--plots DIR`
writes `confusion_matrix.png` and `roc.png`. A label outside [0, 1] or a duplicated row is an error (exit 2);
so are labelled videos of the metadata missing from the submission (named), unless `--allow-partial` scores
the videos present.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kernel.validation import validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel.validate", description=__doc__)
    parser.add_argument("--submission", required=True, help="submission CSV (filename,label)")
    parser.add_argument("--metadata", required=True, help="DFDC metadata.json with REAL/FAKE labels")
    parser.add_argument("--plots", default=None, help="folder for confusion_matrix.png and roc.png")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score the labelled videos the submission has when it lacks some (they are listed)")
    args = parser.parse_args(argv)
    try:
        report = validate(args.submission, args.metadata, args.plots, allow_partial=args.allow_partial)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if report["missing"]:
        names = ", ".join(report["missing"][:10]) + (", ..." if len(report["missing"]) > 10 else "")
        print(f"missing labelled videos: {len(report['missing'])} (not scored: {names})")
    print(f"videos scored: {report['n']} (unlabelled skipped: {report['unlabelled']})")
    print(f"log loss: {report['log_loss']:.4f}  AUC: {report['auc']:.4f}  accuracy: {report['accuracy']:.4f}")
    if args.plots:
        print(f"plots: {Path(args.plots) / 'confusion_matrix.png'}, {Path(args.plots) / 'roc.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
