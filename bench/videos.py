"""The benchmarks' test videos: the dev set (or any folder), chosen by name or interleaved by source, face-crop clips
left out unless asked, and their frame size."""
from __future__ import annotations

from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
DEV_VIDEOS = REPO.parent / "shared" / "data" / "dev" / "videos"
if not DEV_VIDEOS.is_dir():
    DEV_VIDEOS = Path("/work/shared/data/dev/videos")
CROP_PREFIX = "dfdccrop_"


def frame_size(path: Path) -> tuple[int, int, int]:
    capture = cv2.VideoCapture(str(path))
    try:
        return (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()


def select_videos(folder: Path, names: list[str] | None, include_crops: bool, min_short_side: int,
                  limit: int | None) -> list[str]:
    """Explicit `names` in order, else every .mp4 (crops skipped unless asked), interleaved by source group
    (DFDC full videos first) so that `--limit` gives a mix."""
    if names:
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SystemExit(f"not found in {folder}: {missing}")
        chosen = list(names)
    else:
        candidates = sorted(p.name for p in folder.glob("*.mp4"))
        if not include_crops:
            candidates = [n for n in candidates if not n.startswith(CROP_PREFIX)]
        if min_short_side > 0:
            candidates = [n for n in candidates if min(frame_size(folder / n)[:2]) >= min_short_side]
        order = ["dfdc", "ffc23", "ffc40_actor", "ffc40"]
        groups = {g: [n for n in candidates if video_group(n) == g] for g in order}
        chosen = []
        while any(groups.values()):
            for g in order:
                if groups[g]:
                    chosen.append(groups[g].pop(0))
        chosen += [n for n in candidates if video_group(n) in ("unlabelled", CROP_PREFIX)]
    return chosen[:limit] if limit else chosen


def video_group(name: str) -> str:
    """Source group used to interleave a mixed selection: DFDC, FF++ c23, FF++ c40 actors, FF++ c40."""
    if name.startswith("ffc40_actor"):
        return "ffc40_actor"
    for prefix in ("ffc23", "ffc40", CROP_PREFIX, "unlabelled"):
        if name.startswith(prefix):
            return prefix
    return "dfdc"
