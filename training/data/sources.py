"""Data sources for training: what each `--data` folder holds, as checked items and the problems found.

A source is one of
- a DFDC layout: `dfdc_train_part_*/` folders each with `metadata.json` and videos, or one such folder;
- a labelled folder: `real/` and/or `fake/` sub-folders of face images or videos (a `real/`-only folder is all
  real: self-blending makes its fakes), with an optional `metadata.csv` beside them: `file, label` and any of
  `group` (who is in it: one group never crosses folds), `method`, `original`, and more columns, kept in the index.

Every item gets a `video` key unique in a run: a DFDC video keeps its name; a labelled folder's item is
`<source>/<file>` (`utkface/real/1_0_0.jpg`), so two sources never share a key. Rows that cannot be used
(a missing file, an unknown label, a file outside the source) become problems, never exceptions.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from dfdc_core.video import IMAGE_SUFFIXES
from training.data.index import INDEX_COLUMNS, LABELS

log = logging.getLogger("extract_faces")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
LABEL_FOLDERS = {"real": 0, "fake": 1}
METADATA_CSV = "metadata.csv"
KNOWN_COLUMNS = ("file", "label", "group", "method", "original")


@dataclass(frozen=True)
class Item:
    """One video or image to extract: where it is and what its source says about it."""

    source: str
    file: str                 # POSIX path relative to the source folder: the item's place in the crop cache
    name: str                 # the name its metadata gives it (a DFDC video's name, a labelled folder's file)
    path: Path
    label: int
    original: str | None      # the `video` key of the real item this fake was made from
    part: str                 # DFDC part folder, or the label folder of a labelled folder
    is_dfdc: bool = True
    group: str = ""
    method: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES

    @property
    def video(self) -> str:
        """The item's key in the index, the folds and the OOF files, unique in a run."""
        return self.name if self.is_dfdc else f"{self.source}/{self.file}"

    @property
    def original_path(self) -> Path | None:
        """The original video's file, when it lies in this fake's part folder."""
        if not self.original or not self.is_dfdc:
            return None
        path = self.path.parents[len(PurePosixPath(self.name).parts) - 1] / self.original
        return path if path.is_file() else None

    @property
    def key(self) -> str:
        """`<source>/<file>`: the item's crop folder and record under the cache."""
        return f"{self.source}/{self.file}"


@dataclass(frozen=True)
class Problem:
    """A metadata entry or file that yields no crops (or a warning), with the reason."""

    source: str
    video: str
    part: str
    status: str
    message: str


def source_name(root: Path) -> str:
    """A source's name in keys, the index's `source` column and the crop cache: its folder's name."""
    return Path(root).resolve().name


def relative_inside(name: str) -> bool:
    """Whether a metadata name stays inside its folder: relative, no '..' part."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}); re-download the part's metadata.json") from error
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: expected a JSON object {{'name.mp4': {{'label': ...}}}}, "
                         f"got {type(metadata).__name__}")
    return metadata


def find_parts(root: Path) -> list[Path]:
    """DFDC part folders under `root`: `root` itself if it holds `metadata.json`, else its sub-folders that do."""
    if (root / "metadata.json").is_file():
        return [root]
    parts = sorted(p for p in root.iterdir() if p.is_dir() and (p / "metadata.json").is_file())
    if not parts:
        raise FileNotFoundError(f"{root}: no metadata.json in it or in its sub-folders, no real/ or fake/ folder "
                                f"and no {METADATA_CSV}; pass --data a DFDC train part, a folder of "
                                "dfdc_train_part_*/ folders, or a folder with real/ and/or fake/")
    return parts


def dfdc_items(source: str, root: Path, part: Path) -> tuple[list[Item], list[Problem]]:
    """Checked entries of one part's `metadata.json`; bad entries become problems, never exceptions."""
    metadata = read_metadata(part / "metadata.json")
    items, problems = [], []
    prefix = "" if part == root else f"{part.relative_to(root).as_posix()}/"
    for name, entry in sorted(metadata.items()):
        entry = entry if isinstance(entry, dict) else {}
        label, original = entry.get("label"), entry.get("original")
        where = f"{part / 'metadata.json'}: '{name}'"

        def problem(status: str, message: str) -> Problem:
            return Problem(source, name, part.name, status, f"{where} {message}")

        if not relative_inside(name):
            problems.append(problem("outside_source", f"names a file outside {part}; skipped"))
        elif label is None:
            problems.append(problem("unlabelled", "has no label; skipped"))
        elif label not in LABELS:
            problems.append(problem("bad_label", f"has label {label!r}; expected 'REAL' or 'FAKE'; fix the entry "
                                    "or remove it"))
        elif not (part / name).is_file():
            problems.append(problem("missing_file", f"names a file that is not in {part}; copy it there or "
                                    "remove the entry"))
        else:
            original = original if isinstance(original, str) and original else None
            if label == "FAKE" and not original:
                problems.append(problem("no_original", "is FAKE without an 'original'; extracted, and it forms a "
                                        "fold group of its own"))
            elif label == "FAKE" and original not in metadata:
                problems.append(problem("original_absent", f"is FAKE but its original {original!r} is not in this "
                                        "metadata.json; extracted, and grouped with other fakes of the same "
                                        "original when folds are made"))
            items.append(Item(source, prefix + name, name, part / name, LABELS[label], original, part.name))
    return items, problems


def parse_label(value: str) -> int | None:
    """REAL/FAKE (any case) or 0/1 → 0/1; None for anything else."""
    text = str(value).strip().upper()
    return {"REAL": 0, "FAKE": 1, "0": 0, "1": 1}.get(text)


def media_files(folder: Path) -> list[Path]:
    """Images and videos under `folder` (sub-folders included), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)


def read_metadata_csv(path: Path) -> pd.DataFrame:
    """A labelled folder's `metadata.csv`, every cell a string; a clear error if it is not one."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as CSV ({error}); expected columns file,label[,group,method,"
                         "original,...]") from error
    missing = [column for column in ("file", "label") if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: no {' or '.join(repr(c) for c in missing)} column (columns: "
                         f"{list(table.columns)}); expected file,label[,group,method,original,...]")
    return table


def folder_label(file: str) -> int | None:
    """The label a file's top folder gives it (`real/...` 0, `fake/...` 1), else None."""
    return LABEL_FOLDERS.get(file.split("/", 1)[0]) if "/" in file else None


def labelled_folder_items(source: str, root: Path) -> tuple[list[Item], list[Problem]]:
    """Items of a folder with `real/` and/or `fake/` and an optional `metadata.csv` (see the module docstring)."""
    rows: dict[str, dict[str, str]] = {}
    refused: set[str] = set()  # listed files whose line is unusable: not taken from their folder either
    problems = []
    csv_path = root / METADATA_CSV
    if csv_path.is_file():
        table = read_metadata_csv(csv_path)
        for line, row in zip(range(2, len(table) + 2), table.to_dict("records")):
            file = row["file"].strip().replace("\\", "/")
            where = f"{csv_path}: line {line} ({file!r})"
            label = parse_label(row["label"])
            if not relative_inside(file):
                problems.append(Problem(source, file, "", "outside_source", f"{where} names a file outside "
                                        f"{root}; skipped"))
            elif file in rows:
                problems.append(Problem(source, file, "", "duplicate", f"{where} is listed again; the first "
                                        "line is used"))
            elif label is None:
                refused.add(file)
                problems.append(Problem(source, file, "", "bad_label", f"{where} has label {row['label']!r}; "
                                        "expected REAL or FAKE (or 0 / 1); fix the line or remove it"))
            elif folder_label(file) not in (None, label):
                refused.add(file)
                problems.append(Problem(source, file, "", "label_conflict", f"{where} has label {row['label']!r} "
                                        f"but lies in {file.split('/')[0]}/; move the file or fix its label"))
            elif not (root / file).is_file():
                problems.append(Problem(source, file, "", "missing_file", f"{where} names a file that is not "
                                        f"in {root}; copy it there or remove the line"))
            else:
                rows[file] = {**row, "file": file, "label": str(label)}
    for folder, label in LABEL_FOLDERS.items():
        for path in media_files(root / folder):
            file = path.relative_to(root).as_posix()
            if file not in refused:
                rows.setdefault(file, {"file": file, "label": str(label)})
    items = [labelled_item(source, root, row) for file, row in sorted(rows.items())]
    listed = {item.file for item in items}
    for item in items:
        if item.original and item.original.split("/", 1)[1] not in listed:
            problems.append(Problem(source, item.file, item.part, "original_absent", f"{root / item.file}: its "
                                    f"original {item.original!r} is not in {root}; extracted without it"))
    return items, problems


def labelled_item(source: str, root: Path, row: dict[str, str]) -> Item:
    file = row["file"]
    extra = {column if column not in INDEX_COLUMNS else f"meta_{column}": str(value)
             for column, value in row.items() if column not in KNOWN_COLUMNS}
    original = str(row.get("original", "")).strip()
    return Item(source, file, file, root / file, int(row["label"]), f"{source}/{original}" if original else None,
                file.split("/", 1)[0] if "/" in file else "", is_dfdc=False, group=str(row.get("group", "")),
                method=str(row.get("method", "")), extra=extra)


def collect_items(root: Path) -> tuple[list[Item], list[Problem]]:
    """Every extractable item of one source (DFDC layout or labelled folder) and its problems."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: no such folder")
    source = source_name(root)
    if any((root / folder).is_dir() for folder in LABEL_FOLDERS) or (root / METADATA_CSV).is_file():
        items, problems = labelled_folder_items(source, root)
        if not items:
            raise FileNotFoundError(f"{root}: real/ and fake/ hold no images or videos "
                                    f"({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}) and {METADATA_CSV} lists none")
        return items, problems
    items, problems = [], []
    for part in find_parts(root):
        part_items, part_problems = dfdc_items(source, root, part)
        items += part_items
        problems += part_problems
    return items, problems


def collect_sources(roots: list[Path]) -> tuple[list[Item], list[Problem]]:
    """The items of every source, checked to have distinct names and `video` keys."""
    names = [source_name(root) for root in roots]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"--data: two sources are named {repeated[0]!r} (a source is named after its folder); "
                         "pass each folder once, or rename one")
    items, problems, owner = [], [], {}
    for root in roots:
        source_items, source_problems = collect_items(root)
        for item in source_items:
            if item.video in owner:
                raise ValueError(f"--data: video {item.video!r} is in both {owner[item.video]} and {root}; a video "
                                 "name must be unique across sources (DFDC names are): remove one copy")
            owner[item.video] = root
        items += source_items
        problems += source_problems
    return items, problems
