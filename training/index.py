"""The crop index `index.csv` that extraction writes and training reads, and the DFDC labels."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

LABELS = {"REAL": 0, "FAKE": 1}
INDEX_COLUMNS = ["video", "frame", "person", "label", "original", "part", "path", "box", "score", "landmarks"]


def read_index(path: Path) -> pd.DataFrame:
    """An `index.csv` as written here: an empty `original` stays "" (not NaN)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found; run training/extract_faces.py --out {Path(path).parent}")
    index = pd.read_csv(path, dtype={"original": str, "part": str, "video": str, "landmarks": str},
                        keep_default_na=False)
    missing = set(INDEX_COLUMNS) - set(index.columns) - {"landmarks"}
    if missing:
        raise ValueError(f"{path}: lacks columns {sorted(missing)}; pass the index.csv written by extract_faces.py")
    if "landmarks" not in index.columns:  # an index made by hand or by an older extract_faces.py: no SBI
        index["landmarks"] = ""
    return index
