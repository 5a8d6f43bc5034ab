r"""Leak-free k folds: a fake, its original and every other fake of that original share one fold.

    python training/folds.py --index CROPS/index.csv --k 5 --out CROPS/folds.csv
    python training/folds.py --data SOURCE [--data SOURCE ...] --k 5 --out folds.csv
    python training/folds.py --metadata part_0/metadata.json [part_1/metadata.json ...] --k 5 --out folds.csv

`--data` takes the sources `extract_faces.py` reads (DFDC parts, labelled folders with real/ and/or fake/ and an
optional metadata.csv), without extracting them. Groups are the connected components of the fake → original links
(an original that is not itself listed still joins its fakes), of a source's `group` column, of estimated person
ids (`training/configs/person_ids.yaml`, e.g. FaceForensics++ crops whose FF++ id is known to +-3: see
training/data/folds.py) and of name rules: where file names also name a second identity (FaceForensics++ `df_X_Y`:
target X, source Y) or one source video (DFDC face-track clips `dfdccrop_0_<video>_0_1`). The rules in
`training/configs/link_rules.yaml` apply by default (`--links FILE` for others, `--no-default-links` for none);
`--link-pattern` / `--link-to` add one more, e.g.

    --link-pattern 'ffc(?P<q>\d+)_(?:df|f2f|fs|nt)_(?P<a>\d+)_(?P<b>\d+)\.mp4'
    --link-to 'ffc{q}_yt_{a}.mp4' 'ffc{q}_yt_{b}.mp4'

Folds are stratified by label over groups (sklearn's StratifiedGroupKFold), and `check_folds` asserts that no
group crosses folds, no original sits apart from its fakes and no two videos linked by a rule are apart. The
CSV (`video, label, original, source, group, fold`) is what `train_fold.py` reads; items the person ids leave out
are listed in `<out>_left_out.csv` (`video, source, reason`).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dfdc_core.io import write_atomic
from training.data.folds import (
    DEFAULT_LINK_RULES,
    DEFAULT_PERSON_IDS,
    assign_folds,
    fold_links,
    left_out_path,
    log_fold_summary,
    read_link_rules,
    read_person_ids,
    videos_from_index,
    videos_from_items,
    videos_from_metadata,
)
from training.data.sources import collect_sources

log = logging.getLogger("folds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--index", type=Path, help="index.csv written by extract_faces.py")
    source.add_argument("--data", type=Path, action="append", help="a source folder (repeat for several)")
    source.add_argument("--metadata", type=Path, nargs="+", help="one or more DFDC metadata.json files")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--links", type=Path, default=DEFAULT_LINK_RULES, help="link rules YAML (default: "
                        "training/configs/link_rules.yaml)")
    parser.add_argument("--no-default-links", action="store_true", help="apply no link rules file")
    parser.add_argument("--link-pattern", help="regex with named groups over video names that also name identities")
    parser.add_argument("--link-to", nargs="+", default=[], help="names to link a matching video to, e.g. 'x_{a}.mp4'")
    parser.add_argument("--person-ids", type=Path, default=DEFAULT_PERSON_IDS, help="estimated person-id rules "
                        "YAML (default: training/configs/person_ids.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="folds CSV to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if bool(args.link_pattern) != bool(args.link_to):
        log.error("--link-pattern and --link-to go together")
        return 2
    try:
        if args.index:
            videos = videos_from_index(args.index)
        elif args.data:
            videos = videos_from_items(collect_sources(args.data)[0])
        else:
            videos = videos_from_metadata(args.metadata)
        rules = [] if args.no_default_links else read_link_rules(args.links)
        if args.link_pattern:
            rules.append((args.link_pattern, args.link_to))
        links, left_out = fold_links(videos, rules, read_person_ids(args.person_ids))
        table = assign_folds(videos[~videos["video"].isin(left_out["video"])], args.k, args.seed, links)
    except (FileNotFoundError, ValueError) as error:
        log.error("%s", error)
        return 2
    write_atomic(args.out, table.to_csv(index=False))
    if len(left_out):
        write_atomic(left_out_path(args.out), left_out.to_csv(index=False))
        log.info("%d items left out of the folds (person ids): %s", len(left_out), left_out_path(args.out))
    log_fold_summary(table)
    log.info("wrote %d videos in %d folds to %s", len(table), args.k, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
