"""Dense face outlines for self-blending: MediaPipe FaceMesh's 468 points on every real crop, kept as their convex hull.

    python -m training.face_mesh --crops CROPS

`sbi: {p: 1.0, mask: face_mesh}` blends through this hull (the whole face, forehead to chin, as the SBI paper's
81-point hull) instead of the polygon drawn around MTCNN's five points. Writes `CROPS/face_hulls.csv` (`path, hull`:
"x1 y1 x2 y2 ..." in the crop's pixels, empty where FaceMesh finds no face); a rerun only adds crops not yet in it.
A training-time tool: `mediapipe==0.10.14` carries its models in the wheel (later wheels do not) and nothing on the
kernel's path imports it.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from dfdc_core.io import write_atomic
from training.data import read_crop
from training.index import read_index

log = logging.getLogger("face_mesh")

HULLS = "face_hulls.csv"


def hull_text(points: np.ndarray) -> str:
    """The convex hull of `(n, 2)` points as "x1 y1 x2 y2 ..." (one decimal)."""
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)
    return " ".join(f"{x:.1f} {y:.1f}" for x, y in hull)


def parse_hull(text: str) -> np.ndarray | None:
    """A `face_hulls.csv` cell → `(n, 2)` float array; None for an empty cell."""
    values = [float(v) for v in str(text).split()]
    return np.asarray(values, dtype=np.float32).reshape(-1, 2) if len(values) >= 6 else None


def read_hulls(crops: Path) -> dict[str, np.ndarray | None]:
    """`{crop path: hull}` of `CROPS/face_hulls.csv`; a clear error naming the command when it is missing."""
    path = crops / HULLS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: sbi mask face_mesh needs it; run python -m training.face_mesh "
                                f"--crops {crops}")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {row_path: parse_hull(text) for row_path, text in zip(table["path"], table["hull"])}


def run_face_mesh(crops: Path, progress: bool = True) -> Path:
    """FaceMesh hulls of every real crop of `CROPS/index.csv` not yet in `face_hulls.csv`; returns the file."""
    import mediapipe as mp

    index = read_index(crops / "index.csv")
    path = crops / HULLS
    done = pd.read_csv(path, dtype=str, keep_default_na=False) if path.is_file() else pd.DataFrame(
        columns=["path", "hull"])
    todo = sorted(set(index.loc[index["label"] == 0, "path"]) - set(done["path"]))
    log.info("%d real crops, %d with a hull already, %d to mesh", len(done) + len(todo), len(done), len(todo))
    rows = []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1) as mesh:
        for number, crop_path in enumerate(tqdm(todo, desc="face mesh", unit="crop", disable=not progress)):
            crop = read_crop(crops / crop_path)
            found = mesh.process(crop).multi_face_landmarks
            points = np.array([[p.x * crop.shape[1], p.y * crop.shape[0]] for p in found[0].landmark]) if found \
                else None
            rows.append({"path": crop_path, "hull": hull_text(points) if points is not None else ""})
            if (number + 1) % 2000 == 0 or number + 1 == len(todo):
                done = pd.concat([done, pd.DataFrame(rows)], ignore_index=True)
                rows = []
                write_atomic(path, done.to_csv(index=False))
    found_share = (done["hull"] != "").mean() if len(done) else 0.0
    log.info("%s: %d crops, %.1f %% with a face hull", path, len(done), 100 * found_share)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.face_mesh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=Path, required=True, help="extract_faces.py output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_face_mesh(args.crops)
    except FileNotFoundError as error:
        log.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
