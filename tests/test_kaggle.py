"""Issue 11: Kaggle as it is today. Where the kernel and the notebook find the data and the bundle, the files the
kernel leaves for the notebook, and the notebook's retry loop (with the real kernel, crashed by a video)."""
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import kernel.pipeline as pipeline
import kernel.scorer as kernel_scorer
from kernel import kaggle, predict
from kernel.cli import main as kernel_main
from kernel.config import load_config
from tests.helpers import face_videos, faceless_frames, write_video

REPO = Path(__file__).resolve().parents[1]
SLUG = kaggle.COMPETITION
LAYOUTS = {"today": f"input/competitions/{SLUG}", "older": f"input/{SLUG}", "dataset": f"input/datasets/someone/{SLUG}"}


def competition(root: Path, layout: str, names=("a.mp4", "b.mp4"), sample: bool = True) -> Path:
    """The competition's folder in `layout` under `root`, with faceless clips `names` and a sample submission."""
    folder = root / LAYOUTS[layout]
    for name in names:
        write_video(folder / "test_videos" / name, faceless_frames(6, 64, 96))
    if sample:
        pd.DataFrame({"filename": list(names)[::-1], "label": 0.5}).to_csv(folder / "sample_submission.csv",
                                                                          index=False)
    return folder


@pytest.mark.parametrize("layout", LAYOUTS)
def test_competition_data_is_found_in_each_layout(layout, tmp_path):
    folder = competition(tmp_path, layout)
    assert kaggle.find_competition(tmp_path) == kaggle.CompetitionData(folder / "test_videos",
                                                                       folder / "sample_submission.csv")
    (folder / "sample_submission.csv").unlink()
    assert kaggle.find_competition(tmp_path).sample_submission is None


def test_todays_layout_comes_first(tmp_path):
    competition(tmp_path, "older")
    today = competition(tmp_path, "today")
    assert kaggle.find_competition(tmp_path).videos == today / "test_videos"


def test_nothing_found_names_every_place_searched(tmp_path, monkeypatch, tiny_manifest_path, caplog):
    monkeypatch.setenv(kaggle.ROOT_ENV, str(tmp_path))
    with pytest.raises(kaggle.NotFoundOnKaggle) as error:
        kaggle.find_competition()
    for searched in (f"input/competitions/{SLUG}/test_videos", f"input/{SLUG}/test_videos",
                     f"input/datasets/*/{SLUG}/test_videos"):
        assert str(tmp_path / searched) in str(error.value)
    assert kernel_main(["--manifest", str(tiny_manifest_path), "--no-progress"]) == 2
    assert f"--videos not given, and no {SLUG} test_videos/ folder found; searched {tmp_path}" in caplog.text


def test_the_bundle_is_found_by_its_marker_anywhere_under_input(tmp_path):
    with pytest.raises(kaggle.NotFoundOnKaggle, match=r"no dfdc_kit_bundle.json under .*mounted there: \[\]"):
        kaggle.find_bundle(tmp_path)
    for place in ("input/my-bundle", "input/datasets/me/my-bundle"):
        bundle = tmp_path / place
        bundle.mkdir(parents=True)
        (bundle / kaggle.BUNDLE_MARKER).write_text("{}")
        assert kaggle.find_bundle(tmp_path) == bundle
        shutil.rmtree(tmp_path / "input")
    too_deep = tmp_path / "input/a/b/c/d/e"
    too_deep.mkdir(parents=True)
    (too_deep / kaggle.BUNDLE_MARKER).write_text("{}")
    with pytest.raises(kaggle.NotFoundOnKaggle, match=r"4 levels deep; mounted there: \['a'\]"):
        kaggle.find_bundle(tmp_path)


def test_the_kernel_finds_its_inputs_and_writes_under_the_kaggle_root(tmp_path, monkeypatch, tiny_manifest_path):
    monkeypatch.setenv(kaggle.ROOT_ENV, str(tmp_path))
    competition(tmp_path, "dataset")
    run = predict(manifest=tiny_manifest_path, config=load_config(frames=4), progress=False)
    written = pd.read_csv(tmp_path / "working" / "submission.csv")
    assert written["filename"].tolist() == ["b.mp4", "a.mp4"]  # the sample submission's order
    assert run.reasons == {"a.mp4": "no_face", "b.mp4": "no_face"}


def test_in_flight_names_the_videos_being_decoded_and_scored(tmp_path, monkeypatch, tiny_manifest_path):
    videos = face_videos(tmp_path / "videos", 2)
    out = tmp_path / "submission.csv"
    seen = []
    decode, score = pipeline.decode_video, kernel_scorer.Scorer.score

    def marks() -> dict:
        return {stage: (mark["video"], mark["thread"] == threading.get_ident()) if mark else None
                for stage, mark in json.loads(kaggle.in_flight_path(out).read_text()).items()}

    def decoding(path, config):
        seen.append(("decode", path.name, marks()["decode"]))
        return decode(path, config)

    def scoring(self, frames):
        seen.append(("score", marks()["score"]))
        return score(self, frames)

    monkeypatch.setattr(pipeline, "decode_video", decoding)
    monkeypatch.setattr(kernel_scorer.Scorer, "score", scoring)
    predict(videos, None, tiny_manifest_path, out, "cpu", load_config(frames=4), progress=False)
    assert sorted(seen, key=str) == [("decode", "face_0.mp4", ("face_0.mp4", True)),
                                     ("decode", "face_1.mp4", ("face_1.mp4", True)),
                                     ("score", ("face_0.mp4", True)), ("score", ("face_1.mp4", True))]
    assert not kaggle.in_flight_path(out).exists()  # a finished run leaves nothing in progress


def test_crashed_videos_get_the_prior_unread(tmp_path, monkeypatch, tiny_manifest_path):
    videos = face_videos(tmp_path / "videos", 2)
    read = []
    real = pipeline.decode_video
    monkeypatch.setattr(pipeline, "decode_video", lambda path, config: read.append(path.name) or real(path, config))
    run = predict(videos, None, tiny_manifest_path, tmp_path / "s.csv", "cpu", load_config(frames=4, prior=0.4),
                  progress=False, crashed=["face_1.mp4", "not_a_target.mp4"])
    assert read == ["face_0.mp4"] and run.reasons == {"face_0.mp4": "ok", "face_1.mp4": "crashed"}
    assert pd.read_csv(tmp_path / "s.csv")["label"].tolist()[1] == 0.4


def test_crash_suspects_are_the_crashing_threads_video_when_the_log_names_it(tmp_path):
    out = tmp_path / "submission.csv"
    kaggle.in_flight_path(out).write_text(json.dumps({"decode": {"video": "b.mp4", "thread": 0x7F01},
                                                      "score": {"video": "a.mp4", "thread": 0x7F02}}))
    assert kaggle.crash_suspects(out) == ["a.mp4", "b.mp4"]  # killed with no log (e.g. out of memory): both
    kaggle.crash_log_path(out).write_text("Fatal Python error: Aborted\n\nThread 0x00007f02 (most recent call first):\n"
                                          "  File x\n\nCurrent thread 0x00007f01 (most recent call first):\n")
    assert kaggle.crash_suspects(out) == ["b.mp4"]
    kaggle.in_flight_path(out).unlink()
    assert kaggle.crash_suspects(out) == []


POISON = """
import os, sys
sys.path.insert(0, {repo!r})
import kernel.pipeline as pipeline
real = pipeline.decode_video

def decode(path, config):
    if path.name == "b_poison.mp4":
        os.abort()  # a native crash in the decoding thread: no Python handler runs
    return real(path, config)

pipeline.decode_video = decode
from kernel.__main__ import main
sys.exit(main())
"""


@pytest.mark.slow
def test_the_notebook_loop_gives_a_video_that_crashed_the_kernel_twice_the_prior(tmp_path, tiny_manifest_path):
    """The real kernel, killed by SIGABRT whenever it decodes b_poison.mp4: two deaths, then a run that finishes
    with the other videos scored (the first one resumed) and the poison given the prior as `crashed`."""
    videos = face_videos(tmp_path / "videos", 3)
    for number, name in enumerate(["a_face.mp4", "b_poison.mp4", "c_face.mp4"]):
        (videos / f"face_{number}.mp4").rename(videos / name)
    (tmp_path / "poison.py").write_text(POISON.format(repo=str(REPO)))
    out = tmp_path / "working" / "submission.csv"
    command = [sys.executable, str(tmp_path / "poison.py"), "--videos", str(videos), "--manifest",
               str(tiny_manifest_path), "--frames", "4", "--no-progress"]
    runs = kaggle.run_kernel(command, out, time.monotonic() + 600)
    assert runs == kaggle.KernelRuns(True, 3, ["b_poison.mp4"], "the kernel finished")
    submission = pd.read_csv(out)
    assert submission["filename"].tolist() == ["a_face.mp4", "b_poison.mp4", "c_face.mp4"]
    assert submission["label"][1] == 0.5 and submission["label"].between(0.01, 0.99).all()
    summary = json.loads(out.with_name("submission.csv.summary.json").read_text())
    assert summary["fallbacks"] == {"crashed": 1} and summary["scored_this_run"] < 3
    assert not kaggle.crash_log_path(out).exists()  # the last run lived: its crash log is gone


def test_a_death_with_no_video_in_progress_is_tried_once_on_the_cpu(tmp_path):
    calls = tmp_path / "calls.jsonl"
    dies = [sys.executable, "-c", f"import json, sys; open({str(calls)!r}, 'a').write(json.dumps(sys.argv) + '\\n'); "
                                  "sys.exit(1)"]
    runs = kaggle.run_kernel(dies, tmp_path / "submission.csv", time.monotonic() + 600)
    assert runs == kaggle.KernelRuns(False, 2, [], "the kernel died twice with no video in progress (exit 1)")
    devices = [argv[argv.index("--device") + 1] for argv in map(json.loads, calls.read_text().splitlines())]
    assert devices == ["auto", "cpu"]
    refused = kaggle.run_kernel([sys.executable, "-c", "import sys; sys.exit(2)"], tmp_path / "s.csv",
                                time.monotonic() + 600)
    assert refused.runs == 1 and not refused.finished and "exit 2" in refused.why
    assert kaggle.run_kernel(dies, tmp_path / "s.csv", time.monotonic() - 1).why == "the time budget ran out"


def test_when_no_run_finished_the_videos_scored_are_merged_into_the_prior(tmp_path, capsys):
    out = tmp_path / "submission.csv"
    kaggle.checkpoint_path(out).write_text('{"signature": "x", "format": 2}\n'
                                           '{"filename": "a.mp4", "label": 1.5, "reason": "ok"}\n'
                                           '{"filename": "b.mp4", "label": NaN, "reason": "ok"}\n{"torn')
    kaggle.finish(out, ["c.mp4", "b.mp4", "a.mp4"], kaggle.KernelRuns(False, 2, [], "the time budget ran out"))
    assert pd.read_csv(out).values.tolist() == [["c.mp4", 0.5], ["b.mp4", 0.5], ["a.mp4", 0.99]]
    assert "the time budget ran out; " in capsys.readouterr().out


def test_the_notebook_without_a_bundle_leaves_a_complete_prior_submission(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(kaggle.ROOT_ENV, str(tmp_path))
    assert kaggle.main() == 1 and "cannot list the videos to predict" in capsys.readouterr().out
    competition(tmp_path, "today", names=("a.mp4", "b.mp4", "c.mp4"))
    assert kaggle.main() == 0
    assert pd.read_csv(tmp_path / "working" / "submission.csv").values.tolist() == [
        ["c.mp4", 0.5], ["b.mp4", 0.5], ["a.mp4", 0.5]]
    assert "no dfdc_kit_bundle.json under" in capsys.readouterr().out
