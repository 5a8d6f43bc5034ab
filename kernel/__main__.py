"""`python -m kernel`: write submission.csv for a folder of videos (Kaggle paths by default).

Exit 0: the submission is written. Exit 2: a setting, path or input file is unusable; the message names it
and the fix, and no video was read.
"""
from __future__ import annotations

import argparse
import logging
import sys

from kernel.config import KAGGLE_OUT, KAGGLE_SAMPLE_SUBMISSION, KAGGLE_VIDEOS, SettingsError, load_config
from kernel.offline import block_network

log = logging.getLogger("kernel")


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
    parser.add_argument("--max-frame-side", type=int, default=None,
                        help="frames with a longer side are shrunk to it as they are decoded (default 2160)")
    parser.add_argument("--detect-batch-size", type=int, default=None, help="frames per MTCNN batch")
    parser.add_argument("--classify-batch-size", type=int, default=None, help="face crops per forward pass")
    parser.add_argument("--detect-long-side", type=int, default=None,
                        help="long side (px) of the downscaled copy MTCNN sees")
    parser.add_argument("--aggregation", default=None, help="frame→person rule: mean (default), trimmed_mean, "
                        "logit_mean or confident; a manifest's stacker names its own")
    parser.add_argument("--prior", type=float, default=None, help="label for videos that cannot be scored")
    parser.add_argument("--time-budget-hours", type=float, default=None, help="wall-clock budget (default 8.5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--block-network", action="store_true",
                        help="cut this process and its children off the network, to prove the run is offline as on "
                             "Kaggle (a new network namespace where the OS allows one; the log says what is covered)")
    return parser.parse_args(argv)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.block_network:  # first: a new network namespace needs a process that has started no thread yet
        log.info("%s", block_network().describe())
    from kernel.models import ManifestError  # torch, numpy and OpenCV start their threads from here on
    from kernel.pipeline import predict

    try:
        config = load_config(args.config, frames=args.frames, max_frame_side=args.max_frame_side,
                             detect_batch_size=args.detect_batch_size, classify_batch_size=args.classify_batch_size,
                             detect_long_side=args.detect_long_side, aggregation=args.aggregation, prior=args.prior,
                             time_budget_hours=args.time_budget_hours)
        predict(args.videos, args.sample_submission, args.manifest, args.out, args.device or default_device(),
                config, progress=not args.no_progress)
    except (SettingsError, ManifestError) as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
