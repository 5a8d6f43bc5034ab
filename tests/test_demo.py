import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfdc_core.manifest import Manifest, verify_manifest

pytestmark = pytest.mark.slow  # runs the whole kit: a minute or more

REPO = Path(__file__).resolve().parents[1]


def test_reduced_demo_runs_the_kit_end_to_end(tmp_path):
    """`python -m demo --quick`: synthetic data → held-out fold → recipe (crops, folds, 3 models x 2 folds, calibrated
    stacker) → bundle → kernel → metrics."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "demo", "--quick", "--synthetic", "--no-wheels", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "held-out videos:" in result.stdout and "log loss" in result.stdout
    manifest = Manifest.load(out / "bundle" / "weights_manifest.json")
    verify_manifest(manifest)
    assert sorted(spec.arch for spec in manifest.models) == sorted(["legacy_xception", "resnet18",
                                                                    "tf_efficientnet_lite0"] * 2)
    assert {spec.group for spec in manifest.models} == {"xception", "lite0", "resnet18"}
    stacker = json.loads(manifest.stacker_file.read_text())
    assert stacker["feature_names"] == ["lite0.logit", "resnet18.logit", "xception.logit"]
    assert stacker["target_prior"] == 0.5
    with open(out / "holdout_folds.csv", newline="") as handle:
        held_out = {row["video"] for row in csv.DictReader(handle) if row["fold"] == "3"}
    with open(out / "submission.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["filename"] for row in rows} == held_out
    with open(out / "submission.csv.partial.jsonl") as handle:  # the kernel's checkpoint: unclipped scores
        scores = {record["filename"]: record["label"] for record in map(json.loads, list(handle)[1:])}
    assert set(scores) == held_out  # every held-out video scored, none given the prior unread
    for row in rows:  # the submission holds each score clipped to [0.01, 0.99], to 6 decimals
        assert float(row["label"]) == round(min(max(scores[row["filename"]], 0.01), 0.99), 6)
    for plot in ("plots/confusion_matrix.png", "plots/roc.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "recipe" / "runs").glob("*/loss_curve.png"))) == 6
    assert not held_out & set(json.loads((out / "train_videos" / "metadata.json").read_text()))
