"""Issue 11: the budget-aware ensemble. A fake clock makes each model cost 10 s and each video 5 s more, so the kernel
must drop models (folds first, then a group, switching to the stacker's variant) to finish inside its budget."""
import json
import logging
import types

import numpy as np
import pytest

import kernel.pipeline as pipeline
import kernel.scorer as kernel_scorer
from dfdc_core.aggregate import logit
from dfdc_core.manifest import Manifest, ManifestError
from kernel import predict
from kernel.budget import BudgetPlanner, default_drop_order
from kernel.config import load_config
from tests.helpers import face_videos, grouped_manifest

FAST = load_config(frames=4)
MODEL_SECONDS, VIDEO_SECONDS = 10.0, 5.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return face_videos(tmp_path_factory.mktemp("budget_videos"), 8)


@pytest.fixture()
def clock(monkeypatch):
    """The kernel's clock, advanced only by the work it does: 10 s per model and video, 5 s per video's detection."""
    now = [0.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: now[0])
    monkeypatch.setattr(pipeline, "time", fake_time)
    monkeypatch.setattr(kernel_scorer, "time", fake_time)  # the scorer's stage timings, which the budget reads
    forward, find_tracks = kernel_scorer.Scorer._forward, kernel_scorer.Scorer.find_tracks

    def costly_forward(self, model, images):
        now[0] += MODEL_SECONDS
        return forward(self, model, images)

    def costly_find_tracks(self, frames):
        now[0] += VIDEO_SECONDS
        return find_tracks(self, frames)

    monkeypatch.setattr(kernel_scorer.Scorer, "_forward", costly_forward)
    monkeypatch.setattr(kernel_scorer.Scorer, "find_tracks", costly_find_tracks)
    return now


def constant_stacker(features: list[str], label: float) -> dict:
    return {"feature_names": features, "coef": [0.0] * len(features), "intercept": float(logit(label))}


def run(videos, manifest, tmp_path, seconds: float, caplog):
    caplog.set_level(logging.INFO, logger="kernel")
    return predict(videos, None, manifest, tmp_path / "submission.csv", "cpu",
                   dict(FAST, time_budget_hours=seconds / 3600), progress=False)


def test_fold_models_are_dropped_so_every_video_is_scored(clock, videos, tmp_path, caplog):
    """4 folds of one group at 45 s/video; 216 s for 8 videos: after 3 videos (135 s) the 5 left fit only with one
    fold (15 s/video). The Platt calibrator of the group stays."""
    manifest = grouped_manifest(tmp_path / "models", {"lite0": 4}, {"feature_names": ["lite0.logit"], "coef": [1.0],
                                                                     "intercept": 0.0})
    result = run(videos, manifest, tmp_path, 216, caplog)
    assert set(result.reasons.values()) == {"ok"}
    names = sorted(result.reasons)
    assert [result.model_sets[name] for name in names] == [()] * 3 + [("lite0_1", "lite0_2", "lite0_3")] * 5
    assert "on cpu: 45.00 s/video measured over 3 videos; the 5 videos left project to 0.06 h" in caplog.text
    assert "dropping lite0_3, lite0_2, lite0_1 (projected 15.00 s/video" in caplog.text
    assert "model sets: all models: 3 videos; without lite0_1, lite0_2, lite0_3: 5 videos" in caplog.text
    summary = json.loads((tmp_path / "submission.csv.summary.json").read_text())
    assert [(row["models"], row["combined_by"], row["videos"]) for row in summary["model_sets"]] == [
        (["lite0_0", "lite0_1", "lite0_2", "lite0_3"], "the stacker", names[:3]),
        (["lite0_0"], "the stacker", names[3:])]
    assert summary["device"] == "cpu" and summary["fallbacks"] == {}


def test_a_dropped_group_switches_to_the_stacker_variant_fitted_without_it(clock, videos, tmp_path, caplog):
    """Groups a (2 folds) and b (1): 35 s/video, 190 s for 8 videos: a_1 then b_0 must go. The stacker (constant
    0.33) gives way to its variant for group a (constant 0.77)."""
    stacker = constant_stacker(["a.logit", "b.logit"], 0.33)
    stacker["variants"] = [dict(constant_stacker(["a.logit"], 0.77), groups=["a"])]
    manifest = grouped_manifest(tmp_path / "models", {"a": 2, "b": 1}, stacker)
    result = run(videos, manifest, tmp_path, 190, caplog)
    assert set(result.reasons.values()) == {"ok"}
    labels = result.submission["label"].to_numpy()
    assert labels[:3] == pytest.approx([0.33] * 3) and labels[3:] == pytest.approx([0.77] * 5)
    assert "scores combine by the stacker variant for groups ['a']" in caplog.text
    summary = json.loads((tmp_path / "submission.csv.summary.json").read_text())
    assert [row["dropped"] for row in summary["model_sets"]] == [[], ["a_1", "b_0"]]


def test_without_a_variant_the_plain_mean_of_the_groups_left(clock, videos, tmp_path, caplog):
    manifest = grouped_manifest(tmp_path / "models", {"a": 2, "b": 1}, constant_stacker(["a.logit", "b.logit"], 0.33))
    result = run(videos, manifest, tmp_path, 190, caplog)
    labels = result.submission["label"].to_numpy()
    assert labels[:3] == pytest.approx([0.33] * 3) and not np.allclose(labels[3:], 0.33)
    assert "scores combine by the plain mean of the scores of groups ['a']" in caplog.text


def test_when_even_the_smallest_set_cannot_finish_the_last_videos_get_the_prior(clock, videos, tmp_path, caplog):
    manifest = grouped_manifest(tmp_path / "models", {"a": 2, "b": 1})
    result = run(videos, manifest, tmp_path, 150, caplog)
    reasons = [result.reasons[name] for name in sorted(result.reasons)]
    assert reasons == ["ok"] * 6 + ["time_budget"] * 2  # 105 s, then 15 s per video with a_0 alone: 3 more fit
    assert "still over: the last videos will get the prior" in caplog.text


def test_default_drop_order_takes_extra_folds_first_then_groups_and_keeps_the_first(tmp_path):
    names = ["a_0", "a_1", "a_2", "b_0", "b_1", "c_0"]
    entries = [{"name": name, "arch": "test_efficientnet", "file": f"{name}.pth", "sha256": "0" * 64,
                "input_size": 64, "group": name.split("_")[0]} for name in names]  # parsed only: no weights needed
    (tmp_path / "weights_manifest.json").write_text(json.dumps({"models": entries}))
    manifest = Manifest.load(tmp_path / "weights_manifest.json")
    assert default_drop_order(manifest.models) == ["b_1", "a_2", "a_1", "c_0", "b_0"]


def test_planner_projects_the_rate_of_the_models_it_keeps():
    planner = BudgetPlanner(100.0, ["m3", "m2"], ["m1", "m2", "m3"], min_videos=2)
    planner.record(10.0, 1.0, {"m1": 2.0, "m2": 3.0, "m3": 4.0})
    assert planner.to_drop(10.0, 10, "cpu") == []  # too few videos measured to decide
    planner.record(10.0, 1.0, {"m1": 2.0, "m2": 3.0, "m3": 4.0})
    assert planner.rate(["m1"]) == pytest.approx(3.0) and planner.rate(["m1", "m2"]) == pytest.approx(6.0)
    assert planner.to_drop(20.0, 8, "cpu") == []  # 10 s x 8 = 80 s, 80 s left
    assert planner.to_drop(20.0, 12, "cpu") == ["m3"]  # 6 s x 12 = 72 s
    assert planner.to_drop(20.0, 30, "cpu") == ["m3", "m2"]  # 3 s x 30 = 90 s: over, but the smallest set
    slow_decoder = BudgetPlanner(100.0, ["m2"], ["m1", "m2"])
    slow_decoder.record(10.0, 9.0, {"m1": 4.0, "m2": 4.0})
    assert slow_decoder.rate(["m1"]) == pytest.approx(9.0)  # never faster than the decoding thread


@pytest.mark.parametrize("order,message", [(["nope"], "not models of the manifest"), (["a_1", "a_1"], "twice"),
                                           (["a_0", "a_1", "b_0"], "names every model"), ("a_1", "list of model")])
def test_a_bad_drop_order_is_refused(tmp_path, order, message):
    manifest = grouped_manifest(tmp_path, {"a": 2, "b": 1}, drop_order=order)
    with pytest.raises(ManifestError, match=message):
        Manifest.load(manifest)


def test_an_explicit_drop_order_is_followed(clock, videos, tmp_path, caplog):
    manifest = grouped_manifest(tmp_path / "models", {"a": 2, "b": 1}, drop_order=["b_0"])
    result = run(videos, manifest, tmp_path, 190, caplog)  # dropping b_0 alone brings 35 s/video to 25 s/video
    assert set(result.model_sets.values()) == {(), ("b_0",)}
    assert Manifest.load(manifest).drop_order == ("b_0",)


def test_a_stacker_variant_is_checked_like_the_stacker(tmp_path):
    stacker = constant_stacker(["a.logit", "b.logit"], 0.33)
    stacker["variants"] = [dict(constant_stacker(["a.logit"], 0.77), groups=["a"], intercept=float("nan"))]
    with pytest.raises(ManifestError, match=r"not finite.*in its variant for groups \['a'\]"):
        Manifest.load(grouped_manifest(tmp_path, {"a": 2, "b": 1}, stacker))
