"""Manipulation method of each crop from its video's file name, as an index column for attribution training.

    python -m training.methods --index CROPS/index.csv [--column method] [--unmatched skip|label] [--out CSV]

FaceForensics++ names carry the method: `ffc40_df_183_253.mp4` (Deepfakes), `_f2f_` (Face2Face), `_fs_`
(FaceSwap), `_nt_` (NeuralTextures), and `_yt_` / `_actor_` for real videos (`METHOD_PATTERNS`, first
match wins). Other videos (e.g. DFDC) get "" (`--unmatched skip`: train_fold.py leaves them out) or their
metadata label as "real" / "fake" (`--unmatched label`). Writes the column into the index (or `--out`)
atomically; rerun it after extract_faces.py, which rewrites index.csv without it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dfdc_core.io import write_atomic
from training.data.index import read_index
from training.data.methods import label_methods

log = logging.getLogger("methods")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="index.csv written by extract_faces.py")
    parser.add_argument("--column", default="method", help="column to write (train_fold.py's label_column)")
    parser.add_argument("--unmatched", choices=("skip", "label"), default="skip",
                        help="videos no pattern matches: '' (left out of training) or real/fake from their label")
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default: the index itself)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    index = label_methods(read_index(args.index), args.column, args.unmatched)
    out = args.out or args.index
    write_atomic(out, index.to_csv(index=False))
    counts = index.drop_duplicates("video")[args.column].replace("", "(none)").value_counts()
    log.info("wrote %s to %s; videos per %s: %s", args.column, out, args.column,
             ", ".join(f"{name} {n}" for name, n in counts.items()))


if __name__ == "__main__":
    main()
