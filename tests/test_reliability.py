"""Issues 12 and 33, the kernel's reliability: the `kernel.selftest` corpus, every bad setting refused before the first
video, no blank or NaN label, names outside the videos folder."""
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

import kernel.checks as checks
import kernel.pipeline as pipeline
import kernel.scorer as kernel_scorer
from dfdc_core.config import SettingsError
from dfdc_core.manifest import Manifest, ManifestError
from kernel import predict, selftest
from kernel.cli import main as cli_main
from kernel.config import load_config
from kernel.submission import inside_folder, write_submission, writing
from tests.helpers import faceless_frames, write_video

REPO = Path(__file__).resolve().parents[1]
FAST = load_config(frames=4)


@pytest.mark.slow
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
    write_video(folder / "videos" / "clip.mp4", faceless_frames(10, 96, 128))
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


@pytest.mark.slow
def test_cli_exits_2_with_a_message_and_no_traceback(one_video, tiny_manifest_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kernel", "--videos", str(one_video / "videos"), "--sample-submission",
         str(one_video / "sample.csv"), "--manifest", str(tiny_manifest_path), "--out", str(tmp_path / "s.csv"),
         "--device", "cpu", "--frames", "0", "--block-network"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "kernel setting 'frames' is 0" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "s.csv").exists()
    assert "network blocked" in result.stderr  # the log says what the block covers


def test_a_non_finite_score_gets_the_prior(monkeypatch, one_video, tiny_manifest_path, tmp_path):
    monkeypatch.setattr(kernel_scorer.Scorer, "score", lambda self, frames: kernel_scorer.VideoPrediction(
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
    assert Manifest.load(manifest).stacker_file == tmp_path / "stacker.json"
    data["models"][0]["group"] = data["models"][1]["group"] = "other"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="name no model"):
        Manifest.load(manifest)


def test_names_outside_the_videos_folder():
    assert all(inside_folder(name) for name in ["a.mp4", "sub/a.mp4", "..a.mp4", "a..mp4", "NA"])
    assert not any(inside_folder(name) for name in ["../a.mp4", "sub/../../a.mp4", "/etc/passwd", ".", "", "a\0.mp4"])


# ------------------------------------------------------------------------------------------ issue 33, row 1: no hang

class Killed(BaseException):
    """Not an Exception: what no per-video handler catches."""


def ends_within(seconds: float, run) -> BaseException | None:
    """Run `run()` in a thread; fail if it has not ended after `seconds` (a hang); return what it raised."""
    raised: list[BaseException] = []

    def target():
        try:
            run()
        except BaseException as error:  # the test inspects it
            raised.append(error)
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the run hangs"
    return raised[0] if raised else None


def full_disk_for(stage: str):
    """An `InFlight.mark` that fails as on a full disk when the `stage` thread marks its video."""
    real = pipeline.InFlight.mark

    def mark(self, which, filename):
        if which == stage and filename is not None:
            with writing(self.path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(self, which, filename)
    return mark


@pytest.mark.parametrize("stage", ["decode", "score"])
def test_an_in_flight_mark_that_cannot_be_written_ends_the_run_with_its_cause(stage, monkeypatch, one_video,
                                                                             tiny_manifest_path, tmp_path):
    """The decoding thread used to die on it and leave the main thread waiting forever."""
    monkeypatch.setattr(pipeline.InFlight, "mark", full_disk_for(stage))
    out = tmp_path / "s.csv"
    error = ends_within(120, lambda: predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, out,
                                             config=FAST, progress=False))
    assert isinstance(error, SettingsError)
    assert str(error) == (f"{out}.inflight.json: cannot write it (No space left on device); free space there, lift the "
                          "file size limit (ulimit -f) or pass another --out")
    assert not out.exists()


def test_the_in_flight_file_turned_into_a_folder_mid_run_ends_the_run(monkeypatch, one_video, tiny_manifest_path,
                                                                        tmp_path, caplog):
    out = tmp_path / "s.csv"
    real_decode = pipeline.decode_video

    def decode_then_block_the_mark(path, config):
        (tmp_path / "s.csv.inflight.json").unlink(missing_ok=True)
        (tmp_path / "s.csv.inflight.json").mkdir(exist_ok=True)
        return real_decode(path, config)
    monkeypatch.setattr(pipeline, "decode_video", decode_then_block_the_mark)
    code = ends_within(120, lambda: pytest.fail(f"exit {kernel_main(one_video, tiny_manifest_path, out)}"))
    assert isinstance(code, pytest.fail.Exception) and str(code) == "exit 2"
    assert f"{out}.inflight.json: cannot write it (Is a directory)" in caplog.text and not out.exists()


def kernel_main(folder: Path, manifest: Path, out: Path) -> int:
    """`python -m kernel` in this process on `folder`'s one video."""
    return cli_main(["--videos", str(folder / "videos"), "--sample-submission", str(folder / "sample.csv"),
                     "--manifest", str(manifest), "--out", str(out), "--device", "cpu", "--frames", "4",
                     "--no-progress"])


@pytest.mark.parametrize("where", ["decode", "identity"])
def test_anything_the_decoding_thread_raises_reaches_the_main_thread(where, monkeypatch, one_video,
                                                                     tiny_manifest_path, tmp_path):
    def kill(*args, **kwargs):
        raise Killed(f"killed in {where}")
    monkeypatch.setattr(pipeline, {"decode": "decode_video", "identity": "video_identity"}[where], kill)
    error = ends_within(120, lambda: predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path,
                                             tmp_path / "s.csv", config=FAST, progress=False))
    assert isinstance(error, Killed) and str(error) == f"killed in {where}"


def test_an_error_decoding_one_video_still_costs_only_that_video(monkeypatch, one_video, tiny_manifest_path, tmp_path):
    def fail(*args, **kwargs):
        raise MemoryError("frames too large")
    monkeypatch.setattr(pipeline, "decode_video", fail)
    run = predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, tmp_path / "s.csv", config=FAST,
                  progress=False)
    assert run.reasons == {"clip.mp4": "error:MemoryError"}


# ------------------------------------------------------------------------------------------ row 2: output OS errors

@pytest.mark.parametrize("limit,code,message", [
    (50, 2, "s.csv.partial.jsonl: cannot write it (File too large); free space there, lift the file size limit (ulimit "
            "-f) or pass another --out"),  # the checkpoint's header
    (150, 2, "s.csv.partial.jsonl: cannot write it (File too large)"),  # its first record
    (800, 0, "s.csv.summary.json: cannot write the run summary (File too large); "),  # after the submission
])
@pytest.mark.slow
def test_the_file_size_limit_ends_in_exit_2_or_a_warning_never_a_traceback(limit, code, message, one_video,
                                                                           tiny_manifest_path, tmp_path):
    """`ulimit -f` (EFBIG) for real: the kernel in a process whose files may not grow past `limit` bytes."""
    import resource

    out = tmp_path / "s.csv"
    result = subprocess.run(
        [sys.executable, "-m", "kernel", "--videos", str(one_video / "videos"), "--sample-submission",
         str(one_video / "sample.csv"), "--manifest", str(tiny_manifest_path), "--out", str(out), "--device", "cpu",
         "--frames", "4", "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert result.returncode == code and message in result.stderr and "Traceback" not in result.stderr
    assert out.exists() == (code == 0)


def test_a_summary_that_cannot_be_written_is_a_warning_after_the_submission(monkeypatch, one_video,
                                                                            tiny_manifest_path, tmp_path, caplog):
    (tmp_path / "s.csv.summary.json").write_text("")
    real = pipeline.write_atomic

    def summary_disk_full(path, text, durable=True):
        if Path(path).name.endswith(".summary.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text, durable)
    monkeypatch.setattr(pipeline, "write_atomic", summary_disk_full)
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run = predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, tmp_path / "s.csv",
                      config=FAST, progress=False)
    assert list(run.submission["filename"]) == ["clip.mp4"] and (tmp_path / "s.csv").is_file()
    assert (f"{tmp_path / 's.csv.summary.json'}: cannot write the run summary (No space left on device); "
            f"{tmp_path / 's.csv'} is written") in caplog.messages


def test_an_out_name_of_the_longest_length_allowed_writes_every_file(one_video, tiny_manifest_path, tmp_path):
    """`NAME_ROOM` is what the kernel adds to --out's name: at the longest name it allows, every file is written."""
    longest = os.pathconf(tmp_path, "PC_NAME_MAX") - checks.NAME_ROOM
    out = tmp_path / ("s" * (longest - 4) + ".csv")
    predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, out, config=FAST, progress=False)
    predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, out, config=dict(FAST, frames=3),
            progress=False)  # another set-up: the checkpoint is set aside beside it
    assert {path.name[len(out.name):] for path in tmp_path.iterdir()} == {
        "", ".partial.jsonl", ".partial.jsonl.foreign-1", ".summary.json"}


# ------------------------------------------------------------------------------------------ row 3: inputs kept

@pytest.mark.parametrize("which", ["manifest", "video", "sample", "weights", "stacker", "config", "crashed"])
def test_out_may_not_be_an_input(which, one_video, tiny_manifest_path, tmp_path, caplog):
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    manifest = folder / "weights_manifest.json"
    data = json.loads(manifest.read_text())
    (folder / "stacker.json").write_text(json.dumps({"feature_names": ["test_resnet.logit"], "coef": [1.0],
                                                     "intercept": 0.0}))
    manifest.write_text(json.dumps({**data, "stacker": "stacker.json"}))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "crashed.json").write_text("[]")
    videos = tmp_path / "videos"
    shutil.copytree(one_video / "videos", videos)
    shutil.copy(one_video / "sample.csv", tmp_path / "sample.csv")
    out = {"manifest": manifest, "video": videos / "clip.mp4", "sample": tmp_path / "sample.csv",
           "weights": folder / data["models"][1]["file"], "stacker": folder / "stacker.json",
           "config": tmp_path / "config.json", "crashed": tmp_path / "crashed.json"}[which]
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    code = cli_main(["--videos", str(videos), "--sample-submission", str(tmp_path / "sample.csv"), "--manifest",
                     str(manifest), "--out", str(out), "--config", str(tmp_path / "config.json"), "--crashed",
                     str(tmp_path / "crashed.json"), "--device", "cpu", "--no-progress"])
    assert code == 2
    assert f"--out {out}: writing {out} would overwrite the input {out}; pass --out a new file name" in caplog.messages
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_out_as_a_link_to_the_sample_submission_is_refused(one_video, tiny_manifest_path, tmp_path):
    link = tmp_path / "submission.csv"
    link.symlink_to(one_video / "sample.csv")
    with pytest.raises(SettingsError, match=re.escape(f"writing {link} would overwrite the input "
                                                      f"{one_video / 'sample.csv'}")):
        predict(one_video / "videos", one_video / "sample.csv", tiny_manifest_path, link, config=FAST, progress=False)


def test_an_empty_sample_submission_flag_is_no_sample_given(one_video, tiny_manifest_path, tmp_path, caplog):
    """`--sample-submission ''` (an unset variable in a script) is refused, not read as "every video"."""
    code = cli_main(["--videos", str(one_video / "videos"), "--sample-submission", "", "--manifest",
                     str(tiny_manifest_path), "--out", str(tmp_path / "s.csv"), "--device", "cpu", "--no-progress"])
    assert code == 2 and "--sample-submission .: cannot read it (Is a directory)" in caplog.text
    assert not (tmp_path / "s.csv").exists()
