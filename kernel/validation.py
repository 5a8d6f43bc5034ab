"""A submission scored against DFDC labels: every row checked, log loss, AUC and accuracy on the labelled videos, plots.
The command line is `python -m kernel.validate`."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dfdc_core.config import read_regular_file, writable_folder
from dfdc_core.metrics import CLIP, binary_report
from dfdc_core.plots import plot_confusion_matrix, pyplot, save_figure


def read_submission(path: str | Path) -> pd.DataFrame:
    """A submission's rows, every name as written ('NA', 'null' and 'nan' stay names) and every label a number in
    [0, 1], each video once; `ValueError` naming the file and what is wrong otherwise."""
    try:
        submission = pd.read_csv(io.BytesIO(read_regular_file(path)), dtype=str, keep_default_na=False)
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error}); pass --submission the CSV python -m "
                         "kernel wrote") from error
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read it as CSV ({error}); a submission is 'filename,label' rows") from error
    if not {"filename", "label"} <= set(submission.columns):
        raise ValueError(f"{path}: needs 'filename,label' columns, has {list(submission.columns)}")
    if submission.empty:
        raise ValueError(f"{path}: has no rows; a submission has one 'filename,label' row per video")
    check_rows(submission, path)
    return submission.assign(label=pd.to_numeric(submission["label"]))


def read_labels(path: str | Path) -> dict[str, str | None]:
    """`{video: label}` of a DFDC `metadata.json` (an object of objects with a `label`); `ValueError` naming the file
    otherwise."""
    try:
        metadata = json.loads(read_regular_file(path).decode())
    except OSError as error:
        raise ValueError(f"{path}: cannot read it ({error.strerror or error}); pass --metadata the DFDC "
                         "metadata.json") from error
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not valid JSON ({error}); pass --metadata the DFDC metadata.json") from error
    if not (isinstance(metadata, dict) and all(isinstance(entry, dict) for entry in metadata.values())):
        raise ValueError(f"{path}: expected the DFDC metadata, an object of videos, each an object with its "
                         f'"label" ("REAL" or "FAKE"); got {str(metadata)[:80]}')
    return {name: entry.get("label") for name, entry in metadata.items()}


def labelled_pairs(submission: pd.DataFrame, labels: dict[str, str | None]) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the submission whose video has a REAL/FAKE label, with `y` (1 = FAKE); and unlabelled names."""
    known = submission[submission["filename"].map(lambda f: labels.get(f) in ("REAL", "FAKE"))].copy()
    known["y"] = known["filename"].map(lambda f: 1 if labels[f] == "FAKE" else 0)
    return known, sorted(set(submission["filename"]) - set(known["filename"]))


def check_rows(submission: pd.DataFrame, path: str | Path) -> None:
    """Every label a number in [0, 1] (as written: not 'True', not blank) and every video once; `ValueError` naming
    the bad rows otherwise."""
    labels = pd.to_numeric(submission["label"], errors="coerce")
    bad = submission.loc[~labels.between(0, 1), "filename"].tolist()  # NaN and non-numbers fail `between` too
    if bad:
        raise ValueError(f"{path}: {len(bad)} labels are not numbers from 0 to 1 (videos {bad[:10]}); a submission "
                         "holds P(fake)")
    duplicated = sorted(set(submission.loc[submission["filename"].duplicated(), "filename"]))
    if duplicated:
        raise ValueError(f"{path}: {len(duplicated)} videos have more than one row ({duplicated[:10]})")


def missing_labelled(submission: pd.DataFrame, labels: dict[str, str | None]) -> list[str]:
    """Videos with a REAL/FAKE label in the metadata that the submission lacks, sorted."""
    labelled = {name for name, label in labels.items() if label in ("REAL", "FAKE")}
    return sorted(labelled - set(submission["filename"]))


def save_plots(y: np.ndarray, p: np.ndarray, out_dir: Path, threshold: float = 0.5) -> list[Path]:
    """Confusion-matrix and ROC PNGs."""
    from sklearn.metrics import confusion_matrix, roc_curve

    matrix = confusion_matrix(y, (p > threshold).astype(int), labels=[0, 1])
    paths = [plot_confusion_matrix(matrix, ["REAL", "FAKE"], out_dir / "confusion_matrix.png",
                                   f"confusion matrix (threshold {threshold})")]
    fig, ax = pyplot().subplots(figsize=(4, 4))
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label="ROC")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC")
    fig.tight_layout()
    paths.append(save_figure(fig, out_dir / "roc.png"))
    return paths


def validate(submission_path: str | Path, metadata_path: str | Path, plots: str | Path | None = None,
             clip: tuple[float, float] = CLIP, allow_partial: bool = True) -> dict:
    """Log loss, AUC and accuracy of the labelled videos; `missing` lists labelled videos the submission lacks.

    Scoring a subset (a held-out fold) is what callers such as the demo do, so only `allow_partial=False` (the
    CLI's default) makes missing labelled videos an error. Nothing is written outside `plots`.
    """
    submission = read_submission(submission_path)
    labels = read_labels(metadata_path)
    missing = missing_labelled(submission, labels)
    if missing and not allow_partial:
        raise ValueError(f"{submission_path} lacks {len(missing)} labelled videos of {metadata_path} "
                         f"({missing[:10]}); pass --allow-partial to score the videos it has")
    known, unlabelled = labelled_pairs(submission, labels)
    if known.empty:
        raise ValueError(f"no video of {submission_path} has a REAL/FAKE label in {metadata_path}")
    if plots is not None:
        writable_folder(Path(plots), "--plots", Path(plots))
    report = binary_report(known["y"].to_numpy(), known["label"].to_numpy(dtype=np.float64), clip)
    report["unlabelled"] = len(unlabelled)
    report["missing"] = missing
    if plots is not None:
        save_plots(known["y"].to_numpy(), known["label"].to_numpy(dtype=np.float64), Path(plots))
    return report
