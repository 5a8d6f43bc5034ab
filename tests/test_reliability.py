"""Issue 12, the kernel's reliability: the `kernel.selftest` corpus, every bad setting refused before the first
video, no blank or NaN label, names outside the videos folder."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import kernel.pipeline as pipeline
from dfdc_core.models import ManifestError
from kernel import predict, selftest
from kernel.checks import check_manifest
from kernel.config import load_config
from kernel.submission import inside_folder, write_submission
from tests.helpers import faceless_frames, write_h264

REPO = Path(__file__).resolve().parents[1]
FAST = load_config(frames=4)


def test_video_corpus_gets_the_expected_outcomes(tmp_path, tiny_manifest_path):
    """`python -m kernel.selftest`'s videos: every crafted file gets its reason and a finite, clipped label."""
    outcomes = selftest.run_video_corpus(tmp_path, tiny_manifest_path)
    print(selftest.table(outcomes))
    assert [o.case for o in outcomes if not o.passed] == []
    reasons = {o.case: o.got for o in outcomes}
    assert reasons["face_8192x8192.mp4"] == "ok"  # shrunk on decode, its face still found
    assert reasons["../outside.mp4"] == "outside_videos"  # a readable face video, never read


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    """A folder with one decodable clip and a sample submission naming it."""
    folder = tmp_path_factory.mktemp("one_video")
    write_h264(folder / "videos" / "clip.mp4", faceless_frames(10, 96, 128))
    (folder / "sample.csv").write_text("filename,label\nclip.mp4,0.5\n")
    return folder


@pytest.mark.parametrize("case", selftest.SETTINGS_CASES, ids=lambda case: case.name)
def test_bad_setting_is_refused_before_the_first_video(case, one_video, tiny_manifest_path, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "decode_video", lambda *a, **k: pytest.fail("a video was read"))
    setup = selftest.setup_for(tmp_path / "case", tiny_manifest_path, one_video / "videos", one_video / "sample.csv")
    outcome = selftest.run_settings_case(case, setup)
    if outcome.got.startswith("skipped"):
        pytest.skip(outcome.got)
    assert outcome.passed, outcome.got


def test_cli_exits_2_with_a_message_and_no_traceback(one_video, tiny_manifest_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kernel", "--videos", str(one_video / "videos"), "--sample-submission",
         str(one_video / "sample.csv"), "--manifest", str(tiny_manifest_path), "--out", str(tmp_path / "s.csv"),
         "--device", "cpu", "--frames", "0", "--block-network"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "kernel setting 'frames' is 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.csv").exists()
    assert "network blocked" in result.stderr  # the log says what the block covers


def test_a_non_finite_score_gets_the_prior(monkeypatch, one_video, tiny_manifest_path, tmp_path):
    monkeypatch.setattr(pipeline.Scorer, "score", lambda self, frames: pipeline.VideoPrediction(
        float("nan"), {}, {}, [], {}, [], {}))
    run = predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, tmp_path / "s.csv",
                  config=dict(FAST, prior=0.3), progress=False)
    assert run.reasons == {"clip.mp4": "non_finite"}
    assert pd.read_csv(tmp_path / "s.csv")["label"].tolist() == [0.3]


def test_a_non_finite_label_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="non-finite labels"):
        write_submission(tmp_path / "s.csv", ["a.mp4", "b.mp4"], {"a.mp4": 0.5, "b.mp4": float("nan")}, (0.01, 0.99))
    assert not (tmp_path / "s.csv").exists()


def test_stacker_features_may_name_a_group_of_models(tiny_manifest_path, tmp_path):
    data = json.loads(tiny_manifest_path.read_text())
    for entry in data["models"]:
        entry["group"] = "tiny"
    (tmp_path / "stacker.json").write_text(json.dumps({"feature_names": ["tiny.mean"], "coef": [1.0],
                                                       "intercept": 0.0}))
    data["stacker"] = "stacker.json"
    manifest = tmp_path / "weights_manifest.json"
    manifest.write_text(json.dumps(data))
    assert check_manifest(manifest).stacker == tmp_path / "stacker.json"
    data["models"][0]["group"] = data["models"][1]["group"] = "other"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="name no model"):
        check_manifest(manifest)


def test_names_outside_the_videos_folder():
    assert all(inside_folder(name) for name in ["a.mp4", "sub/a.mp4", "..a.mp4", "a..mp4", "NA"])
    assert not any(inside_folder(name) for name in ["../a.mp4", "sub/../../a.mp4", "/etc/passwd", ".", "", "a\0.mp4"])
