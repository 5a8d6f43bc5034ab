"""The crop index `index.csv` that extraction writes and training reads, and the DFDC labels."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

LABELS = {"REAL": 0, "FAKE": 1}
INDEX_COLUMNS = ["video", "frame", "person", "label", "original", "part", "path", "box", "score", "landmarks",
                 "source", "group", "method"]  # then any extra columns of the sources' metadata.csv, as text
NUMERIC_COLUMNS = {"frame": "int64", "person": "int64", "label": "int64", "score": "float64"}
OPTIONAL_COLUMNS = ("landmarks", "source", "group", "method")  # an index made by hand or by an older version


def read_index(path: Path) -> pd.DataFrame:
    """An `index.csv` as written here: every column but the numeric ones is text, and an empty cell stays ""."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found; run training/extract_faces.py --out {Path(path).parent}")
    header = pd.read_csv(path, nrows=0).columns
    index = pd.read_csv(path, dtype={column: NUMERIC_COLUMNS.get(column, str) for column in header},
                        keep_default_na=False)
    missing = set(INDEX_COLUMNS) - set(index.columns) - set(OPTIONAL_COLUMNS)
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}; pass the index.csv written by extract_faces.py")
    for column in OPTIONAL_COLUMNS:
        if column not in index.columns:  # no landmarks: no SBI; no source: one source
            index[column] = ""
    return index
