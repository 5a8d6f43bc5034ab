import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc_core.metrics import log_loss
from kernel.evaluation import validate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def labelled(tmp_path):
    metadata = {"a.mp4": {"label": "FAKE"}, "b.mp4": {"label": "REAL"}, "c.mp4": {"label": "FAKE"},
                "d.mp4": {"label": "REAL"}, "e.mp4": {"label": None}}
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    submission = pd.DataFrame({"filename": ["a.mp4", "b.mp4", "c.mp4", "d.mp4", "e.mp4"],
                               "label": [1.0, 0.3, 0.25, 0.0, 0.5]})
    submission.to_csv(tmp_path / "submission.csv", index=False)
    return tmp_path


def test_log_loss_clips_like_the_kernel():
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(-np.log(0.99))
    assert log_loss([1], [0.0]) == pytest.approx(-np.log(0.01))


def test_validate_reports_metrics_and_plots(labelled):
    report = validate(labelled / "submission.csv", labelled / "metadata.json", labelled / "plots")
    expected = -np.mean(np.log([0.99, 0.7, 0.25, 0.99]))
    assert report["log_loss"] == pytest.approx(expected)
    assert report["auc"] == pytest.approx(0.75) and report["accuracy"] == pytest.approx(0.75)
    assert report["n"] == 4 and report["unlabelled"] == 1
    for name in ("confusion_matrix.png", "roc.png"):
        assert (labelled / "plots" / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_validate_cli_prints_the_figures_and_fails_clearly(labelled):
    ok = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(labelled / "submission.csv"),
                         "--metadata", str(labelled / "metadata.json")], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and "AUC: 0.7500" in ok.stdout
    (labelled / "bad.csv").write_text("name,prob\nx,1\n")
    bad = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(labelled / "bad.csv"),
                          "--metadata", str(labelled / "metadata.json")], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "filename,label" in bad.stderr
