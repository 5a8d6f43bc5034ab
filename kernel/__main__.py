"""`python -m kernel`: write submission.csv for a folder of videos (Kaggle paths by default)."""
from __future__ import annotations

import argparse
import logging
import sys

from kernel.aggregate import STRATEGIES
from kernel.config import load_config
from kernel.models import ManifestError
from kernel.offline import block_network
from kernel.pipeline import KAGGLE_OUT, KAGGLE_SAMPLE_SUBMISSION, KAGGLE_VIDEOS, predict


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernel", description=__doc__)
    parser.add_argument("--videos", default=str(KAGGLE_VIDEOS), help="folder of test videos")
    parser.add_argument("--sample-submission", default=str(KAGGLE_SAMPLE_SUBMISSION),
                        help="CSV whose 'filename' column lists the videos, in order (absent: every video)")
    parser.add_argument("--manifest", default="weights_manifest.json", help="weights_manifest.json")
    parser.add_argument("--out", default=str(KAGGLE_OUT), help="submission CSV to write")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--config", default=None, help="JSON overriding kernel/default_config.json")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled per video (default 32)")
    parser.add_argument("--detect-batch-size", type=int, default=None, help="frames per MTCNN batch")
    parser.add_argument("--classify-batch-size", type=int, default=None, help="face crops per forward pass")
    parser.add_argument("--detect-long-side", type=int, default=None,
                        help="long side (px) of the downscaled copy MTCNN sees")
    parser.add_argument("--aggregation", choices=sorted(STRATEGIES), default=None,
                        help="frame→person rule (default mean; a manifest's stacker names its own)")
    parser.add_argument("--prior", type=float, default=None, help="label for videos that cannot be scored")
    parser.add_argument("--time-budget-hours", type=float, default=None, help="wall-clock budget (default 8.5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--block-network", action="store_true",
                        help="refuse every network connection, to prove the run is offline as on Kaggle")
    return parser.parse_args(argv)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.block_network:
        block_network()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(args.config, frames=args.frames, detect_batch_size=args.detect_batch_size,
                         classify_batch_size=args.classify_batch_size, detect_long_side=args.detect_long_side,
                         aggregation=args.aggregation, prior=args.prior, time_budget_hours=args.time_budget_hours)
    try:
        predict(args.videos, args.sample_submission, args.manifest, args.out, args.device or default_device(),
                config, progress=not args.no_progress)
    except (ManifestError, FileNotFoundError) as error:
        logging.getLogger("kernel").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
