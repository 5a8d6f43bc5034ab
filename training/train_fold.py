"""Train one fold of a face classifier and export it for the kernel.

    python training/train_fold.py --config training/configs/effnet_lite0_dev.yaml --fold 0 [--resume]
    torchrun --nproc_per_node N training/train_fold.py --config CONFIG --fold K

Writes to OUT/NAME/: config.yaml, last.pt (checkpoint every epoch), metrics.csv, loss_curve.png,
weights_fp16.pth (the exported weights: the last epoch's, EMA-averaged when `ema` is set, or with
`export: best` those of the best val log loss) and oof.csv (`video, frame, person, model, prob, label` per crop
of the fold's validation videos, predicted by the exported weights loaded the kernel's way); adds or replaces the
model's entry in the weights manifest.

With `num_classes > 1` it learns the classes of `label_column` (e.g. the FF++ method, see training/methods.py)
with softmax cross-entropy; `prob` is then 1 - P(real_class), oof.csv adds one `p_<class>` column per class,
metrics.csv per-class video accuracy, and confusion_matrix.png/.csv show the best weights' video predictions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dfdc_core.config import SettingsError, parse_overrides
from training.engine.train_fold import ResumeError, run_training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="YAML/JSON overriding training/configs/default.yaml")
    parser.add_argument("--fold", type=int, required=True, help="validation fold; the others are trained on")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any key of training/configs/default.yaml over --config (repeatable; the value is read as "
                             "JSON: --set epochs=2 --set lr=0.0003)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/NAME/last.pt")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="train at most this many epochs in this invocation (time-boxed sessions), then exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the fold is trained (or stopped by --stop-after); 2 when a setting is unusable (an unknown key,
    a --set without '=') or --resume cannot continue from the checkpoint (missing, empty, damaged, of another run: the
    message names it and the fix)."""
    args = parse_args(argv)
    try:
        run_training(args.config, args.fold, args.resume, args.stop_after, parse_overrides(args.set))
    except (ResumeError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
