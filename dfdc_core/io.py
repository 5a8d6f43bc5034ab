"""Files written whole or not at all. Standard library only: `kernel/kaggle.py` runs before the kit is installed, so
`python -m ensemble.bundle` inlines this module into the bundle's `kernel_notebook.py`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, text: str | bytes, durable: bool = True) -> None:
    """Write `text` (or bytes) to `path` through a temporary file in the same folder and a rename.

    `durable` syncs the data to disk before the rename; without it the file still survives a crash of this process
    (not of the machine), which is all the in-flight marks need.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
