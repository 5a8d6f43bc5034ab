import csv
import json
import subprocess
import sys
from pathlib import Path

from kernel.models import load_manifest, verify_manifest

REPO = Path(__file__).resolve().parents[1]


def test_reduced_demo_runs_the_kit_end_to_end(tmp_path):
    """`python -m demo --quick`: synthetic data → crops → folds → 3 models → stacker → bundle → kernel → metrics."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "demo", "--quick", "--synthetic", "--no-wheels", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "held-out videos:" in result.stdout and "log loss" in result.stdout
    manifest = load_manifest(out / "bundle" / "weights_manifest.json")
    verify_manifest(manifest)
    assert sorted(spec.arch for spec in manifest.models) == ["legacy_xception", "resnet18", "tf_efficientnet_lite0"]
    assert manifest.stacker is not None and json.loads(manifest.stacker.read_text())["feature_names"]
    with open(out / "crops" / "folds.csv", newline="") as handle:
        held_out = {row["video"] for row in csv.DictReader(handle) if row["fold"] == "3"}
    with open(out / "submission.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["filename"] for row in rows} == held_out
    assert all(0.01 <= float(row["label"]) <= 0.99 for row in rows)
    for plot in ("plots/confusion_matrix.png", "plots/roc.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "runs").glob("*/loss_curve.png"))) == 3
