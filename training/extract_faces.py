"""Face crops for training, cut by the kernel's own decoder, detector, tracker and crop function.

    python training/extract_faces.py --data ROOT [--data ROOT ...] --out CROPS [--frames 32] [--shard i --num-shards n]

Each ROOT is a source (training/data/sources.py): DFDC layout (`dfdc_train_part_*/` folders each with `metadata.json`
and mp4s, or one such folder), or a labelled folder (`real/` and/or `fake/` sub-folders of face images or videos, a
`real/`-only folder being all real) with an optional `metadata.csv` (`file, label` and any of `group, method,
original` and more columns). An image is one frame: padded by its edge pixels before detection (`still_pad` of the
kernel config), as the kernel pads the images it scores. Crops are stored lossless (PNG) at the size the kernel cuts
them, so a training tensor is the kernel's tensor for the same face. Each finished item leaves a record in
`CROPS/records/<source>/`, so a rerun with the same settings skips it (unless a crop of it is lost); every run then
merges all records into `CROPS/index.csv` (`video, frame, person, label, original, part, path, box, score,
landmarks, source, group, method` and the metadata.csv's other columns) and `CROPS/problems.csv`.

In a FAKE video with several persons only the manipulated face is labelled FAKE: with the original video
at hand, the tracks whose pixels differ from the original's (at least half as much as the most changed
track's) are kept; without it, only the longest track. The other persons are left out of the index.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.data.extract_faces import run_extraction


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a source: DFDC root/part folder, or a folder with real/ and/or fake/ "
                        "(repeat for several)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for crops, index.csv, problems.csv")
    parser.add_argument("--frames", type=int, default=None,
                        help="evenly spaced frames sampled per video (default: the kernel's, 32)")
    parser.add_argument("--shard", type=int, default=0, help="this process's shard, 0..num-shards-1")
    parser.add_argument("--num-shards", type=int, default=1, help="how many processes/machines split the data")
    parser.add_argument("--max-side", type=int, default=None,
                        help="shrink crops larger than this (saves disk; exact for models of this input size only)")
    parser.add_argument("--config", type=Path, default=None, help="kernel config JSON (default: kernel defaults)")
    parser.add_argument("--device", default="cpu", help="face detector device, e.g. cuda:0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        run_extraction(args.data, args.out, args.frames, args.shard, args.num_shards, args.max_side, args.config,
                       args.device)
    except (FileNotFoundError, ValueError) as error:
        logging.getLogger("extract_faces").error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
