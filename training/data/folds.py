"""Group k-fold assignment: a fake always shares its fold with its original, and videos linked by name rules (the same
person filmed again), by a source's `group` column or by estimated person ids share one; `check_folds` refuses any
split that breaks this. The command line is `training/folds.py`.

Estimated person ids (`training/configs/person_ids.yaml`): a source's metadata column may give each item's person id
only to within +-tolerance (the FaceForensics++ crops: the FF++ video id, estimated to +-3). Two items whose
estimates differ by at most twice the tolerance may show one person, and chaining such pairs would join every item
into one group; instead the ids are cut into blocks (each run of estimates without a gap wider than twice the
tolerance, split into parts about `block` ids wide), and the items whose estimate lies within the tolerance of a
cut are left out, so no person's items can lie in two blocks. An item whose estimate lies within the tolerance of an
exact id that another source's names give (`ffc40_yt_183.mp4` is `ffpp:183` by the link rules) is left out too:
no person is trained on in one fold and scored in another.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.model_selection import StratifiedGroupKFold

from training.data.index import LABELS, read_index
from training.data.sources import read_metadata

log = logging.getLogger("folds")

FOLD_COLUMNS = ["video", "label", "original", "source", "group", "fold"]
LEFT_OUT_COLUMNS = ["video", "source", "reason"]
DEFAULT_LINK_RULES = Path(__file__).parents[1] / "configs" / "link_rules.yaml"
DEFAULT_PERSON_IDS = Path(__file__).parents[1] / "configs" / "person_ids.yaml"
PERSON_ID_KEYS = {"column", "namespace", "tolerance", "block"}


LinkRule = tuple[str, list[str]]


def videos_from_metadata(paths: list[Path]) -> pd.DataFrame:
    """`video, label, original` of every labelled entry in DFDC `metadata.json` files (label 1 = FAKE)."""
    rows = []
    for path in paths:
        for name, entry in read_metadata(Path(path)).items():
            label = entry.get("label") if isinstance(entry, dict) else None
            if label not in LABELS:
                log.warning("%s: '%s' has label %r, not REAL/FAKE: left out of the folds", path, name, label)
                continue
            rows.append({"video": name, "label": LABELS[label], "original": entry.get("original") or ""})
    return pd.DataFrame(rows, columns=["video", "label", "original"])


def videos_from_index(path: Path) -> pd.DataFrame:
    """One row per video of an `extract_faces.py` index: `video, label, original, source, group, method` and the
    sources' extra metadata columns."""
    index = read_index(path)
    per_crop = {"frame", "person", "part", "path", "box", "score", "landmarks"}
    return index.drop_duplicates("video")[[c for c in index.columns if c not in per_crop]].reset_index(drop=True)


def videos_from_items(items: list) -> pd.DataFrame:
    """One row per item of `training.data.sources.collect_sources` (the same columns as `videos_from_index`)."""
    rows = [{"video": item.video, "label": item.label, "original": item.original or "", "source": item.source,
             "group": item.group, "method": item.method, **item.extra} for item in items]
    extra = sorted({column for item in items for column in item.extra})
    return pd.DataFrame(rows, columns=["video", "label", "original", "source", "group", "method", *extra]).fillna("")


def text_column(table: pd.DataFrame, column: str) -> pd.Series:
    """`table[column]` as text, or blanks where the table has no such column."""
    return table[column].astype(str) if column in table.columns else pd.Series("", index=table.index)


def group_links(videos: pd.DataFrame) -> list[tuple[str, str]]:
    """A source's `group` column: every item of one group is linked to the node `group:<source>:<group>`."""
    return [(video, f"group:{source}:{group}") for video, source, group in
            zip(videos["video"], text_column(videos, "source"), text_column(videos, "group")) if group]


def read_person_ids(path: Path) -> list[dict[str, Any]]:
    """Estimated person-id rules of a YAML list of {column, namespace, tolerance, block}, checked."""
    rules = yaml.safe_load(Path(path).read_text()) or []
    for rule in rules if isinstance(rules, list) else [None]:
        if not (isinstance(rule, dict) and set(rule) == PERSON_ID_KEYS and isinstance(rule["tolerance"], int)
                and isinstance(rule["block"], int) and 0 <= rule["tolerance"] < rule["block"] / 2):
            raise ValueError(f"{path}: expected a list of {{column, namespace, tolerance: N >= 0, block: M > 2N}}, "
                             f"got {rule!r}")
    return rules


def id_blocks(estimates: np.ndarray, tolerance: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """For each estimated id, its block number and whether it lies within `tolerance` of a cut between blocks.

    Runs of estimates are split where two neighbours are more than 2 x tolerance apart (no person spans such a
    gap); a run is cut into parts about `block` ids wide, and estimates in [cut - tolerance, cut + tolerance - 1]
    are marked: the kept estimates on the two sides of a cut then differ by more than 2 x tolerance.
    """
    values = np.unique(estimates)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(values) > 2 * tolerance) + 1])
    block_of, near_cut, number = {}, {}, 0
    for start, stop in zip(starts, [*starts[1:], len(values)]):
        low, high = int(values[start]), int(values[stop - 1])
        parts = max(1, round((high - low + 1) / block))
        cuts = [low + round(i * (high - low + 1) / parts) for i in range(1, parts)]
        for value in values[start:stop].tolist():
            block_of[value] = number + sum(value >= cut for cut in cuts)
            near_cut[value] = any(cut - tolerance <= value <= cut + tolerance - 1 for cut in cuts)
        number += parts
    return (np.array([block_of[v] for v in estimates.tolist()], dtype=np.int64),
            np.array([near_cut[v] for v in estimates.tolist()], dtype=bool))


def person_id_links(videos: pd.DataFrame, links: list[tuple[str, str]],
                    rules: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Links of the items with estimated person ids to their blocks, and the items left out (see the module
    docstring), as `video, source, reason`."""
    new_links, left_out = [], []
    for rule in rules:
        column, namespace, tolerance = rule["column"], rule["namespace"], rule["tolerance"]
        if column not in videos.columns:
            continue
        rows = videos[videos[column].astype(str).str.strip() != ""]
        numbers = pd.to_numeric(rows[column], errors="coerce")
        bad = rows[numbers.isna() | (numbers != numbers.round())]
        left_out += [(video, source, f"{column} {value!r} is no whole number") for video, source, value in
                     zip(bad["video"], text_column(bad, "source"), bad[column])]
        rows, numbers = rows.drop(bad.index), numbers.drop(bad.index).astype(np.int64).to_numpy()
        if not len(rows):
            continue
        exact = sorted({int(match.group(1)) for _, name in links
                        if (match := re.fullmatch(rf"{re.escape(namespace)}:(\d+)", name))})
        blocks, near_cut = id_blocks(numbers, tolerance, rule["block"])
        for video, source, estimate, block_number, cut in zip(rows["video"], text_column(rows, "source"), numbers,
                                                               blocks, near_cut):
            named = [d for d in exact if abs(d - int(estimate)) <= tolerance]
            if named:
                left_out.append((video, source, f"{column} {estimate} may be {namespace}:{named[0]:03d}, a person "
                                 "of other videos (link rules)"))
            elif cut:
                left_out.append((video, source, f"{column} {estimate} lies within {tolerance} of a cut between "
                                 "person-id blocks"))
            else:
                new_links.append((video, f"{namespace}-block:{block_number}"))
    return new_links, pd.DataFrame(left_out, columns=LEFT_OUT_COLUMNS)


def fold_links(videos: pd.DataFrame, link_rules: list[LinkRule],
               person_ids: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], pd.DataFrame]:
    """Every link that joins `videos` beyond their `original`: name rules, `group` columns, estimated person ids;
    and the items the person ids leave out."""
    links = rule_links(videos["video"], link_rules) + group_links(videos)
    id_links, left_out = person_id_links(videos, links, person_ids)
    dropped = set(left_out["video"])
    return [link for link in links + id_links if link[0] not in dropped], left_out


def read_link_rules(path: Path) -> list[LinkRule]:
    """`(pattern, link_to templates)` of a link-rules YAML (a list of {pattern, link_to})."""
    rules = yaml.safe_load(Path(path).read_text()) or []
    if not isinstance(rules, list) or not all(isinstance(r, dict) and {"pattern", "link_to"} <= set(r) for r in rules):
        raise ValueError(f"{path}: expected a list of {{pattern: REGEX, link_to: [TEMPLATE, ...]}}")
    return [(rule["pattern"], list(rule["link_to"])) for rule in rules]


def rule_links(videos: pd.Series, rules: list[LinkRule]) -> list[tuple[str, str]]:
    """Every link the rules make between `videos` and the names they point at."""
    return [link for pattern, templates in rules for link in name_links(videos, pattern, templates)]


def name_links(videos: pd.Series, pattern: str, templates: list[str]) -> list[tuple[str, str]]:
    """(video, linked name) for every video whose name fully matches `pattern`, one per filled-in template."""
    regex = re.compile(pattern)
    links = []
    for video in videos:
        match = regex.fullmatch(video)
        if match:
            try:
                links += [(video, template.format(**match.groupdict())) for template in templates]
            except KeyError as error:
                raise ValueError(f"--link-to {templates}: {error} is not a named group of --link-pattern") from error
    return links


def connected_groups(videos: pd.Series, originals: pd.Series,
                     extra_links: list[tuple[str, str]] = ()) -> np.ndarray:
    """Group number of each video: connected components of the video–original (and extra) links (union–find)."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for video, original in [*zip(videos, originals), *extra_links]:
        root = find(video)
        if original:
            parent[root] = find(original)
    roots = [find(video) for video in videos]
    numbering = {root: number for number, root in enumerate(dict.fromkeys(roots))}
    return np.array([numbering[root] for root in roots], dtype=np.int64)


def assign_folds(videos: pd.DataFrame, k: int, seed: int = 0,
                 extra_links: list[tuple[str, str]] = ()) -> pd.DataFrame:
    """Add `group` and `fold` columns: stratified by source and label, no group split across folds."""
    table = videos.copy()
    table["original"] = table["original"].fillna("").astype(str)
    table["source"] = text_column(table, "source")
    table["group"] = connected_groups(table["video"], table["original"], extra_links)
    n_groups = table["group"].nunique()
    if k < 2 or k > n_groups:
        raise ValueError(f"--k {k}: need 2 <= k <= number of groups ({n_groups} groups among {len(table)} videos)")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    table["fold"] = -1
    strata = table["source"] + ":" + table["label"].astype(str)  # every source's reals and fakes spread over folds
    for fold, (_, val_rows) in enumerate(splitter.split(table, strata, table["group"])):
        table.loc[table.index[val_rows], "fold"] = fold
    check_folds(table, extra_links)
    return table[FOLD_COLUMNS]


def check_folds(table: pd.DataFrame, links: list[tuple[str, str]] = ()) -> None:
    """Assert every video has a fold, no group crosses folds, no original sits apart from its fakes, and no two
    videos joined by a name link (directly or through a shared name) sit in different folds."""
    if (table["fold"] < 0).any():
        raise AssertionError(f"videos without a fold: {table.loc[table['fold'] < 0, 'video'].tolist()[:5]}")
    folds_per_group = table.groupby("group")["fold"].nunique()
    split = folds_per_group[folds_per_group > 1]
    if len(split):
        raise AssertionError(f"groups split across folds: {split.index.tolist()[:5]}")
    fold_of = dict(zip(table["video"], table["fold"]))
    for video, original, fold in zip(table["video"], table["original"], table["fold"]):
        if original in fold_of and fold_of[original] != fold:
            raise AssertionError(f"{video} is in fold {fold} but its original {original} in fold {fold_of[original]}")
    linked: dict[str, set[tuple[str, int]]] = {}
    for video, name in links:
        if video in fold_of:
            linked.setdefault(name, set()).add((video, fold_of[video]))
            if name in fold_of and fold_of[name] != fold_of[video]:
                raise AssertionError(f"{video} (fold {fold_of[video]}) and {name} (fold {fold_of[name]}) share a "
                                     "source by the link rules but sit in different folds")
    for name, members in linked.items():
        if len({fold for _, fold in members}) > 1:
            raise AssertionError(f"videos linked to {name} sit in different folds: {sorted(members)}")


def left_out_path(folds_path: Path) -> Path:
    """Where the items left out of a folds CSV are listed: `<folds>_left_out.csv` beside it."""
    return folds_path.with_name(f"{folds_path.stem}_left_out.csv")


def log_fold_summary(table: pd.DataFrame) -> None:
    for fold, rows in table.groupby("fold"):
        sources = ", ".join(f"{source or '-'} {count}" for source, count in rows["source"].value_counts().items())
        log.info("fold %d: %d videos (%d fake, %d real), %d groups; by source: %s", fold, len(rows),
                 int(rows["label"].sum()), int((rows["label"] == 0).sum()), rows["group"].nunique(), sources)
        if rows["label"].nunique() < 2:
            log.warning("fold %d has one class only: AUC cannot be computed on it", fold)
