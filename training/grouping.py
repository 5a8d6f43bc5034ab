"""Group k-fold assignment: a fake always shares its fold with its original, and videos linked by name rules (the same
person filmed again) share one; `check_folds` refuses any split that breaks this. The command line is
`training/folds.py`."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.model_selection import StratifiedGroupKFold

from training.index import LABELS, read_index

log = logging.getLogger("folds")

FOLD_COLUMNS = ["video", "label", "original", "group", "fold"]
DEFAULT_LINK_RULES = Path(__file__).with_name("configs") / "link_rules.yaml"


LinkRule = tuple[str, list[str]]


def videos_from_metadata(paths: list[Path]) -> pd.DataFrame:
    """`video, label, original` of every labelled entry in DFDC `metadata.json` files (label 1 = FAKE)."""
    rows = []
    for path in paths:
        for name, entry in json.loads(Path(path).read_text()).items():
            label = entry.get("label") if isinstance(entry, dict) else None
            if label not in LABELS:
                log.warning("%s: '%s' has label %r, not REAL/FAKE: left out of the folds", path, name, label)
                continue
            rows.append({"video": name, "label": LABELS[label], "original": entry.get("original") or ""})
    return pd.DataFrame(rows, columns=["video", "label", "original"])


def videos_from_index(path: Path) -> pd.DataFrame:
    """One row per video of an `extract_faces.py` index (`video, label, original`)."""
    return read_index(path).drop_duplicates("video")[["video", "label", "original"]].reset_index(drop=True)


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
    """Add `group` and `fold` columns: stratified by label, no group split across folds."""
    table = videos.copy()
    table["original"] = table["original"].fillna("").astype(str)
    table["group"] = connected_groups(table["video"], table["original"], extra_links)
    n_groups = table["group"].nunique()
    if k < 2 or k > n_groups:
        raise ValueError(f"--k {k}: need 2 <= k <= number of groups ({n_groups} groups among {len(table)} videos)")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    table["fold"] = -1
    for fold, (_, val_rows) in enumerate(splitter.split(table, table["label"], table["group"])):
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


def log_fold_summary(table: pd.DataFrame) -> None:
    for fold, rows in table.groupby("fold"):
        log.info("fold %d: %d videos (%d fake, %d real), %d groups", fold, len(rows), int(rows["label"].sum()),
                 int((rows["label"] == 0).sum()), rows["group"].nunique())
        if rows["label"].nunique() < 2:
            log.warning("fold %d has one class only: AUC cannot be computed on it", fold)
