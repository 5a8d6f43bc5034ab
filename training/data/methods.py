"""Manipulation methods named by video file names (FaceForensics++: `_df_`, `_f2f_`, `_fs_`, `_nt_`; `_yt_` and
`_actor_` real): the attribution classes of `python -m training.methods` and the per-method rows of the quality
benchmarks."""
from __future__ import annotations

import logging
import re

import pandas as pd

log = logging.getLogger("methods")

REAL = "real"
METHOD_PATTERNS = (
    (r"(?:^|_)df_", "Deepfakes"),
    (r"(?:^|_)f2f_", "Face2Face"),
    (r"(?:^|_)fs_", "FaceSwap"),
    (r"(?:^|_)nt_", "NeuralTextures"),
    (r"(?:^|_)(?:yt|actor)_", REAL),
)


def method_of(video: str, label: int, unmatched: str = "skip") -> str:
    """The method a video name names; else "" (`unmatched="skip"`) or "real"/"fake" from its 0/1 label."""
    for pattern, method in METHOD_PATTERNS:
        if re.search(pattern, video):
            return method
    if unmatched == "skip":
        return ""
    return REAL if int(label) == 0 else "fake"


def label_methods(index: pd.DataFrame, column: str = "method", unmatched: str = "skip") -> pd.DataFrame:
    """`index` with `column` set per video; warns where a name's method contradicts its REAL/FAKE label."""
    videos = index.drop_duplicates("video")
    methods = {video: method_of(video, label, unmatched) for video, label in zip(videos["video"], videos["label"])}
    contradicting = [video for video, label in zip(videos["video"], videos["label"])
                     if methods[video] and (methods[video] == REAL) != (int(label) == 0)]
    if contradicting:
        log.warning("%d videos' names contradict their label (e.g. %s): check METHOD_PATTERNS",
                    len(contradicting), contradicting[0])
    return index.assign(**{column: index["video"].map(methods)})
