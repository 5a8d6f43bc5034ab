"""The submission writer and the crash checkpoint (`kernel/submission.py`, `kernel.pipeline.run_signature`) on crafted
inputs: which videos and in what order, clipping, atomic writes, and which records a resume may reuse.

Fast unit tests: `make mutation` runs them against mutants of these modules (see docs/testing.md).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import kernel.pipeline as pipeline
import kernel.submission as submission
from dfdc_core.config import SettingsError
from dfdc_core.manifest import Manifest
from kernel.config import load_config
from kernel.submission import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    InFlight,
    Record,
    checkpoint_path,
    clip_probs,
    inside_folder,
    sample_filenames,
    target_filenames,
    video_identity,
    write_atomic,
    write_submission,
)

BOUNDS = (0.01, 0.99)


def messages(caplog, level: int = logging.WARNING) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == level]


# ------------------------------------------------------------------------------------------ which videos, in order

def make_videos(folder: Path, names: list[str]) -> Path:
    """Files created in the order given (so the folder's listing order is not the sorted one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder


def test_without_a_sample_every_video_of_the_folder_in_sorted_order(tmp_path, caplog):
    folder = make_videos(tmp_path / "videos", ["c.mp4", "a.mp4", "B.MOV", "notes.txt", "b.avi", "d.webm", "e.mkv",
                                               "x.mp4.part", "README"])
    with caplog.at_level(logging.WARNING):
        assert target_filenames(folder, None) == ["B.MOV", "a.mp4", "b.avi", "c.mp4", "d.webm", "e.mkv"]
    assert messages(caplog) == []


def test_a_sample_named_but_absent_or_a_folder_is_refused_naming_the_flag(tmp_path):
    """Issue 33: a mistyped --sample-submission no longer scores every video of the folder instead."""
    folder = make_videos(tmp_path / "videos", ["z.mp4", "y.mp4"])
    for sample, cause in [(tmp_path / "sample_submision.csv", "No such file or directory"),
                          (folder, "Is a directory"), (tmp_path / ("s" * 300 + ".csv"), "File name too long"),
                          (folder / "z.mp4" / "sample.csv", "Not a directory")]:
        with pytest.raises(SettingsError) as error:
            target_filenames(folder, sample)
        assert str(error.value) == (f"--sample-submission {sample}: cannot read it ({cause}); pass the competition's "
                                    "sample_submission.csv, or leave the flag out to predict every video of --videos")


def test_the_sample_order_wins_over_the_folder(tmp_path):
    folder = make_videos(tmp_path / "videos", ["a.mp4", "b.mp4"])
    sample = tmp_path / "sample.csv"
    sample.write_text("filename,label\nb.mp4,0.5\nnot_there.mp4,0.5\nNA,0.5\nnan,0.5\na.mp4,0.5\n")
    assert target_filenames(folder, sample) == ["b.mp4", "not_there.mp4", "NA", "nan", "a.mp4"]
    sample.write_text("filename,label\n0001,0.5\n2,0.5\n")  # names as written, not numbers
    assert target_filenames(folder, sample) == ["0001", "2"]
    assert target_filenames(tmp_path / "no_folder", sample) == ["0001", "2"]  # the sample alone decides


def test_some_video_must_be_there(tmp_path):
    """Issue 33: a folder with no video (or none of those the sample lists) is refused: every video would get the
    prior."""
    empty = make_videos(tmp_path / "empty", [])
    no_videos = make_videos(tmp_path / "no_videos", ["notes.txt", "x.mp4.part", "README"])
    (no_videos / "folder.mp4").mkdir()
    for folder in (empty, no_videos):
        with pytest.raises(SettingsError) as error:
            submission.check_videos_found(folder, target_filenames(folder, None), None)
        assert str(error.value) == (f"--videos {folder}: no videos in it (files named *.mp4, *.avi, *.mov, *.mkv, "
                                    "*.webm, *.jpg, *.jpeg, *.png, *.bmp, *.webp); pass the folder of the test videos")
    make_videos(tmp_path, ["outside.mp4"])
    sample = tmp_path / "sample.csv"
    names = ["a.mp4", "folder.mp4", "../outside.mp4", str(tmp_path / "outside.mp4"), "x" * 300 + ".mp4"]
    with pytest.raises(SettingsError) as error:
        submission.check_videos_found(no_videos, names, sample)
    assert str(error.value) == (f"--videos {no_videos}: none of the 5 videos {sample} lists is there (e.g. "
                                "['a.mp4', 'folder.mp4', '../outside.mp4']); pass the folder that holds them")
    (no_videos / "sub").mkdir()
    make_videos(no_videos / "sub", ["b.mp4"])
    submission.check_videos_found(no_videos, names + ["sub/b.mp4"], sample)  # one is enough: the rest get the prior
    submission.check_videos_found(make_videos(tmp_path / "one", ["a.MOV"]), ["a.MOV"], None)


def test_a_missing_videos_folder_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^videos folder .*no_folder not found; pass --videos DIR$"):
        target_filenames(tmp_path / "no_folder", None)


@pytest.mark.parametrize("text,message", [
    ("", r": cannot read it as CSV \(.*\); expected the DFDC 'filename,label' format$"),
    ("name,label\na.mp4,0.5\n", r": no 'filename' column \(columns: \['name', 'label'\]\); expected the DFDC "
                                r"'filename,label' format$"),
    ("filename,label\n", r": lists no videos; expected one 'filename' row per test video$"),
    ("filename,label\na.mp4,0\n ,0\nb.mp4,0\n,0\n", r": empty filename on line\(s\) \[3, 5\]; every row must name a "
                                                   r"video$"),
    ("filename,label\n" + ",0\n" * 12 + "a.mp4,0\n", r": empty filename on line\(s\) \[2, 3, 4, 5, 6, 7, 8, 9, 10, 11\]; every "
                                        r"row must name a video$"),  # the first 10 of 12
])
def test_a_bad_sample_submission_is_a_settings_error_naming_the_fix(tmp_path, text, message):
    sample = tmp_path / "sample.csv"
    sample.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(str(sample)) + message):
        sample_filenames(sample)


def test_a_sample_that_is_not_text_is_a_settings_error(tmp_path):
    sample = tmp_path / "sample.csv"
    sample.write_bytes(b"filename,label\n\xff\xfe\x00a.mp4,0\n")
    with pytest.raises(SettingsError, match="cannot read it as CSV"):
        sample_filenames(sample)


def test_names_inside_the_videos_folder():
    assert [inside_folder(name) for name in ["a.mp4", "s/a.mp4", "..a.mp4", "../a.mp4", "/a.mp4", "", "a\0.mp4",
                                             "s/../a.mp4"]] == [True, True, True, False, False, False, False, False]


# ------------------------------------------------------------------------------------------ writing the CSV

def test_labels_are_clipped_to_the_bounds_and_written_in_order(tmp_path):
    names = ["b.mp4", "a.mp4", "c.mp4", "d.mp4", "e.mp4"]
    labels = {"a.mp4": 0.0, "b.mp4": 1.0, "c.mp4": 0.5, "d.mp4": -3.0, "e.mp4": 0.0123456789, "unused.mp4": 0.7}
    out = tmp_path / "sub" / "submission.csv"
    frame = write_submission(out, names, labels, BOUNDS)
    assert out.read_text() == ("filename,label\nb.mp4,0.990000\na.mp4,0.010000\nc.mp4,0.500000\nd.mp4,0.010000\n"
                               "e.mp4,0.012346\n")
    assert frame["filename"].tolist() == names
    assert frame["label"].tolist() == [0.99, 0.01, 0.5, 0.01, 0.0123456789]
    write_submission(out, ["a.mp4", "c.mp4"], labels, (0.2, 0.4))
    assert pd.read_csv(out)["label"].tolist() == [0.2, 0.4]


def test_clip_probs_is_float64_within_the_bounds():
    clipped = clip_probs(np.array([-1, 0, 0.3, 2], dtype=np.float32), (0.25, 0.75))
    assert clipped.dtype == np.float64 and clipped.tolist() == [0.25, 0.25, float(np.float32(0.3)), 0.75]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_label_is_refused_and_nothing_written(tmp_path, bad):
    out = tmp_path / "submission.csv"
    labels = {f"v{i}.mp4": bad for i in range(7)} | {"ok.mp4": 0.5}
    names = ["ok.mp4"] + [f"v{i}.mp4" for i in range(7)]
    with pytest.raises(ValueError, match=re.escape(f"non-finite labels for 7 videos "
                                                   f"({names[1:6]}); nothing written to {out}") + "$"):
        write_submission(out, names, labels, BOUNDS)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_write_atomic_goes_through_a_hidden_file_in_the_same_folder(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def recording(source, target):
        replaced.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(submission.os, "replace", recording)
    out = tmp_path / "new" / "sub" / "submission.csv"
    write_atomic(out, "text\n")
    (source, target), = replaced
    assert target == out and source.parent == out.parent
    assert source.name.startswith(".submission.csv.") and source.name.endswith(".tmp")
    assert out.read_text() == "text\n" and (out.stat().st_mode & 0o777) == 0o644
    write_atomic(out, b"\x00bytes")
    assert out.read_bytes() == b"\x00bytes" and sorted(p.name for p in out.parent.iterdir()) == ["submission.csv"]


def test_write_atomic_syncs_to_disk_unless_told_not_to(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    write_atomic(tmp_path / "a.csv", "a\n")
    assert len(synced) == 1  # the submission survives a crash of the machine
    write_atomic(tmp_path / "b.json", "{}", durable=False)
    assert len(synced) == 1


def test_write_atomic_raises_the_first_error_when_the_temporary_is_already_gone(tmp_path, monkeypatch):
    def lose_it(source, target):
        os.unlink(source)
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(os, "replace", lose_it)
    with pytest.raises(RuntimeError, match="the disk went away"):
        write_atomic(tmp_path / "a.csv", "a\n")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_leaves_the_old_file_and_no_temporary_on_failure(tmp_path):
    out = tmp_path / "submission.csv"
    out.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(out, 12345)  # neither str nor bytes: the write fails
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["submission.csv"]


# ------------------------------------------------------------------------------------------ the checkpoint

def test_checkpoint_path_is_beside_the_submission():
    assert checkpoint_path(Path("/w/out/submission.csv")) == Path("/w/out/submission.csv.partial.jsonl")


def test_video_identity_is_absolute_path_size_and_mtime(tmp_path, monkeypatch):
    (tmp_path / "a.mp4").write_bytes(b"12345")
    os.utime(tmp_path / "a.mp4", ns=(1_000_000_123, 2_000_000_456))
    monkeypatch.chdir(tmp_path)
    assert video_identity(Path("a.mp4")) == {"path": str(tmp_path / "a.mp4"), "size": 5, "mtime_ns": 2_000_000_456}
    assert video_identity(Path("absent.mp4")) is None


def identities(folder: Path):
    return lambda name: video_identity(folder / name)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture()
def folder(tmp_path) -> Path:
    return make_videos(tmp_path / "videos", ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])


def record(folder: Path, name: str, label: float = 0.9, reason: str = "ok", dropped: tuple[str, ...] = ()) -> Record:
    return Record(label, reason, 1.5, video_identity(folder / name), dropped)


def row(name: str, record: Record) -> dict:
    """A record as its checkpoint line reads back (JSON has lists, not tuples)."""
    return {"filename": name, **vars(record), "dropped": list(record.dropped)}


def test_a_new_checkpoint_starts_with_its_signature_and_appends_each_video(folder, tmp_path):
    path = tmp_path / "s.csv.partial.jsonl"
    checkpoint = Checkpoint(path, "sig", identities(folder))
    assert checkpoint.done == {} and checkpoint.retried == []
    assert lines_of(path) == [{"signature": "sig", "format": CHECKPOINT_FORMAT}]
    checkpoint.add("a.mp4", record(folder, "a.mp4", dropped=("m2", "m3")))
    assert lines_of(path)[1] == {"filename": "a.mp4", "label": 0.9, "reason": "ok", "seconds": 1.5,
                                 "identity": video_identity(folder / "a.mp4"), "dropped": ["m2", "m3"]}  # flushed
    checkpoint.close()
    assert checkpoint.done == {"a.mp4": record(folder, "a.mp4", dropped=("m2", "m3"))}
    resumed = Checkpoint(path, "sig", identities(folder))
    resumed.close()
    assert resumed.done == checkpoint.done  # the dropped models read back as they were written


def test_resume_reuses_records_of_unchanged_videos_and_retries_environment_fallbacks(folder, tmp_path, caplog):
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "sig", identities(folder))
    first.add("a.mp4", record(folder, "a.mp4", 0.8))
    first.add("a.mp4", record(folder, "a.mp4", 0.7))  # a later line wins
    first.add("b.mp4", record(folder, "b.mp4", 0.5, "missing_file"))
    first.add("c.mp4", record(folder, "c.mp4", 0.5, "error:ZeroDivisionError"))
    first.add("d.mp4", record(folder, "d.mp4", 0.5, "decode_error"))
    first.add("e.mp4", Record(0.5, "no_face", 0.1, None))  # no identity: never reused
    first.close()
    before = path.read_bytes()
    (folder / "e.mp4").write_bytes(b"e")
    with caplog.at_level(logging.WARNING):
        second = Checkpoint(path, "sig", identities(folder))
    second.close()
    assert second.done == {"a.mp4": record(folder, "a.mp4", 0.7)}
    assert second.retried == ["b.mp4", "c.mp4", "d.mp4"]
    assert messages(caplog) == [f"{path} set aside as s.csv.partial.jsonl.stale-1: 1 of its videos changed since "
                                "they were scored (['e.mp4']); they are scored again"]
    assert (tmp_path / "s.csv.partial.jsonl.stale-1").read_bytes() == before
    assert lines_of(path) == [{"signature": "sig", "format": CHECKPOINT_FORMAT},
                              row("a.mp4", record(folder, "a.mp4", 0.7))]


def test_an_unchanged_checkpoint_is_appended_to_not_rewritten(folder, tmp_path, caplog):
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "sig", identities(folder))
    first.add("a.mp4", record(folder, "a.mp4"))
    first.add("b.mp4", record(folder, "b.mp4", 0.5, "decode_error"))
    first.close()
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        second = Checkpoint(path, "sig", identities(folder))
    second.add("c.mp4", record(folder, "c.mp4"))
    second.close()
    assert messages(caplog) == [] and not list(tmp_path.glob("*-1"))
    assert path.read_bytes().startswith(before) and lines_of(path)[-1]["filename"] == "c.mp4"


def test_the_stale_message_names_the_first_five_changed_videos(tmp_path, caplog):
    folder = make_videos(tmp_path / "videos", [f"{i}.mp4" for i in range(7)])
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "sig", identities(folder))
    for i in range(7):
        first.add(f"{i}.mp4", record(folder, f"{i}.mp4"))
    first.close()
    for i in range(6):
        (folder / f"{i}.mp4").write_bytes(b"changed")
    with caplog.at_level(logging.WARNING):
        Checkpoint(path, "sig", identities(folder)).close()
    assert messages(caplog)[0].endswith("6 of its videos changed since they were scored "
                                        "(['0.mp4', '1.mp4', '2.mp4', '3.mp4', '4.mp4']); they are scored again")


def test_a_changed_video_is_scored_again(folder, tmp_path):
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "sig", identities(folder))
    first.add("a.mp4", record(folder, "a.mp4"))
    first.add("b.mp4", record(folder, "b.mp4"))
    first.close()
    (folder / "b.mp4").write_bytes(b"another file of another size")
    (folder / "a.mp4").unlink()
    second = Checkpoint(path, "sig", identities(folder))
    second.close()
    assert second.done == {} and (tmp_path / "s.csv.partial.jsonl.stale-1").is_file()


@pytest.mark.parametrize("first_line", ['{"signature": "other", "format": 2}', "[1, 2]", "not json", '"sig"', ""])
def test_a_checkpoint_of_another_set_up_is_set_aside_whole(folder, tmp_path, caplog, first_line):
    path = tmp_path / "s.csv.partial.jsonl"
    text = "\n".join([first_line, json.dumps(row("a.mp4", record(folder, "a.mp4")))]) + "\n"
    path.write_text(text)
    (tmp_path / "s.csv.partial.jsonl.foreign-1").write_text("an older one")
    with caplog.at_level(logging.WARNING):
        checkpoint = Checkpoint(path, "sig", identities(folder))
    checkpoint.close()
    assert checkpoint.done == {} and checkpoint.retried == []
    assert (tmp_path / "s.csv.partial.jsonl.foreign-2").read_text() == text
    assert (tmp_path / "s.csv.partial.jsonl.foreign-1").read_text() == "an older one"
    assert messages(caplog) == [f"{path} set aside as s.csv.partial.jsonl.foreign-2: it is from another model/config "
                                "set-up or not a checkpoint"]
    assert lines_of(path) == [{"signature": "sig", "format": CHECKPOINT_FORMAT}]


def test_an_empty_checkpoint_file_is_set_aside(folder, tmp_path):
    path = tmp_path / "s.csv.partial.jsonl"
    path.write_text("")
    Checkpoint(path, "sig", identities(folder)).close()
    assert (tmp_path / "s.csv.partial.jsonl.foreign-1").read_text() == ""
    assert lines_of(path) == [{"signature": "sig", "format": CHECKPOINT_FORMAT}]


def test_a_record_without_dropped_models_is_read_as_none_dropped(folder, tmp_path):
    path = tmp_path / "s.csv.partial.jsonl"
    line = {key: value for key, value in row("a.mp4", record(folder, "a.mp4")).items() if key != "dropped"}
    path.write_text(json.dumps({"signature": "sig", "format": CHECKPOINT_FORMAT}) + "\n" + json.dumps(line) + "\n")
    checkpoint = Checkpoint(path, "sig", identities(folder))
    checkpoint.close()
    assert checkpoint.done == {"a.mp4": record(folder, "a.mp4")}


def test_damaged_lines_are_skipped_and_their_videos_scored_again(folder, tmp_path, caplog):
    path = tmp_path / "s.csv.partial.jsonl"
    good = {name: json.dumps(row(name, record(folder, name))) for name in ("a.mp4", "d.mp4")}
    damaged = ['{"filename": "b.mp4", "label": 0.5', '{"filename": "c.mp4", "label": "high", "reason": "ok", '
               '"seconds": 1, "identity": null}', '{"label": 0.5, "reason": "ok", "seconds": 1, "identity": null}',
               '{"filename": "c.mp4", "label": 0.5, "reason": "ok", "seconds": 1}', "[]",
               '{"filename": "c.mp4", "label": null, "reason": "ok", "seconds": 1, "identity": null}',
               '{"filename": "c.mp4", "label": 0.5\xff, "reason": "ok", "seconds": 1, "identity": null}']
    lines = [json.dumps({"signature": "sig", "format": 2}), good["a.mp4"], *damaged, good["d.mp4"]]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))  # the last damaged line is not UTF-8
    with caplog.at_level(logging.WARNING):
        checkpoint = Checkpoint(path, "sig", identities(folder))
    checkpoint.close()
    assert set(checkpoint.done) == {"a.mp4", "d.mp4"}
    assert messages(caplog) == [f"{path}: line {n} is damaged; that video is scored again" for n in range(3, 10)]


def test_a_torn_last_line_is_cut_and_a_whole_file_left_alone(folder, tmp_path, caplog):
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "sig", identities(folder))
    first.add("a.mp4", record(folder, "a.mp4"))
    first.close()
    whole = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        Checkpoint(path, "sig", identities(folder)).close()
    assert path.read_bytes() == whole and messages(caplog) == []
    torn = b'{"filename": "b.mp4", "lab'
    path.write_bytes(whole + torn)
    with caplog.at_level(logging.WARNING):
        second = Checkpoint(path, "sig", identities(folder))
    second.add("b.mp4", record(folder, "b.mp4"))
    second.close()
    assert messages(caplog) == [f"{path}: cutting off a torn last line ({len(torn)} bytes; the run was killed mid-write)"]
    assert [row.get("filename") for row in lines_of(path)] == [None, "a.mp4", "b.mp4"]


# ------------------------------------------------------------------------------------------ the set-up's signature

@pytest.fixture()
def set_up(tmp_path) -> tuple[Manifest, dict]:
    content = b'{"models": [], "stacker": "stacker.json"}{"coef": [1.0]}'  # the manifest's bytes, then its stacker's
    return Manifest((), tmp_path / "stacker.json", tmp_path / "weights_manifest.json", content=content), load_config()


def test_the_signature_changes_with_the_manifest_the_stacker_and_the_config(set_up):
    manifest, config = set_up
    signature = pipeline.run_signature(manifest, config)
    assert signature == pipeline.run_signature(replace(manifest, path=Path("elsewhere.json")), config)  # content only
    assert re.fullmatch(r"[0-9a-f]{64}", signature)
    assert pipeline.run_signature(manifest, dict(reversed(list(config.items())))) == signature  # key order is no change
    assert pipeline.run_signature(manifest, dict(config, frames=16)) != signature
    assert pipeline.run_signature(manifest, dict(config, time_budget_hours=0.5)) == signature  # the budget aside
    changed_stacker = pipeline.run_signature(replace(manifest, content=manifest.content.replace(b"1.0", b"2.0")), config)
    no_stacker = pipeline.run_signature(replace(manifest, content=b'{"models": [], "stacker": "stacker.json"}'), config)
    assert len({signature, changed_stacker, no_stacker}) == 3


def test_the_signature_includes_the_checkpoint_format(set_up, monkeypatch):
    manifest, config = set_up
    signature = pipeline.run_signature(manifest, config)
    monkeypatch.setattr(pipeline, "CHECKPOINT_FORMAT", CHECKPOINT_FORMAT + 1)
    assert pipeline.run_signature(manifest, config) != signature


def test_open_checkpoint_logs_what_it_resumes_and_retries(folder, tmp_path, caplog):
    out = tmp_path / "s.csv"
    first = pipeline.open_checkpoint(out, "sig", folder, ["a.mp4"])
    first.add("a.mp4", record(folder, "a.mp4"))
    first.add("b.mp4", record(folder, "b.mp4", 0.5, "decode_error"))
    first.add("c.mp4", record(folder, "c.mp4", 0.5, "missing_file"))
    first.add("x.mp4", record(folder, "d.mp4", 0.5, "missing_file"))
    first.close()
    assert lines_of(first.path)[0]["signature"] == "sig"
    with caplog.at_level(logging.INFO, logger="kernel"):
        checkpoint = pipeline.open_checkpoint(out, "sig", folder, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"])
    checkpoint.close()
    assert checkpoint.path == tmp_path / "s.csv.partial.jsonl" and set(checkpoint.done) == {"a.mp4"}
    assert messages(caplog, logging.INFO) == [
        f"resuming: 1 of 4 videos already done in {checkpoint.path}",
        "trying again 2 videos whose earlier fallback the environment can cause (b.mp4, c.mp4)"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kernel"):
        pipeline.open_checkpoint(out, "sig", folder, ["d.mp4"]).close()
    assert messages(caplog, logging.INFO) == []


def test_open_checkpoint_names_the_first_five_videos_tried_again(tmp_path, caplog):
    names = [f"{i}.mp4" for i in range(6)]
    folder = make_videos(tmp_path / "videos", names)
    first = pipeline.open_checkpoint(tmp_path / "s.csv", "sig", folder, names)
    for name in names:
        first.add(name, record(folder, name, 0.5, "decode_error"))
    first.close()
    with caplog.at_level(logging.INFO, logger="kernel"):
        pipeline.open_checkpoint(tmp_path / "s.csv", "sig", folder, names).close()
    assert messages(caplog, logging.INFO) == ["trying again 6 videos whose earlier fallback the environment can cause "
                                              "(0.mp4, 1.mp4, 2.mp4, 3.mp4, 4.mp4)"]


# ------------------------------------------------------------------------------------------ the in-flight marks

def test_in_flight_marks_name_each_stages_video_and_thread(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)  # marks are rewritten twice a video: never waited on to disk
    marks = InFlight(tmp_path / "submission.csv")
    assert marks.path == tmp_path / "submission.csv.inflight.json" and not marks.path.exists()
    marks.mark("decode", "a.mp4")
    me = threading.get_ident()
    assert json.loads(marks.path.read_text()) == {"decode": {"video": "a.mp4", "thread": me}, "score": None}
    worker = threading.Thread(target=marks.mark, args=("score", "b.mp4"))
    worker.start()
    worker.join()
    assert json.loads(marks.path.read_text()) == {"decode": {"video": "a.mp4", "thread": me},
                                                  "score": {"video": "b.mp4", "thread": worker.ident}}
    marks.mark("decode", None)
    assert json.loads(marks.path.read_text())["decode"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv.inflight.json"]  # no temporary left
    marks.clear()
    assert not marks.path.exists() and synced == []
    marks.clear()  # nothing to remove: no error


# ------------------------------------------------------------------------------------------ issue 33: output errors

WRITE_FIX = "free space there, lift the file size limit (ulimit -f) or pass another --out"


def failing(code: int):
    """A stand-in for a write that fails with the OS error `code` (ENOSPC: disk full, EFBIG: `ulimit -f`)."""
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EISDIR])
def test_an_os_error_writing_the_checkpoint_header_names_the_file_and_the_cause(folder, tmp_path, monkeypatch, code):
    path = tmp_path / "s.csv.partial.jsonl"
    monkeypatch.setattr(submission, "write_atomic", failing(code))
    with pytest.raises(SettingsError) as error:
        Checkpoint(path, "sig", identities(folder))
    assert str(error.value) == f"{path}: cannot write it ({os.strerror(code)}); {WRITE_FIX}"
    assert isinstance(error.value.__cause__, OSError)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, where every write is ENOSPC")
def test_an_os_error_appending_to_or_closing_the_checkpoint_is_a_settings_error(folder, tmp_path):
    path = tmp_path / "s.csv.partial.jsonl"
    checkpoint = Checkpoint(path, "sig", identities(folder))
    checkpoint._handle.close()
    checkpoint._handle = open("/dev/full", "a")  # a full disk
    for action in (lambda: checkpoint.add("a.mp4", record(folder, "a.mp4")), checkpoint.close):
        with pytest.raises(SettingsError) as error:
            action()
        assert str(error.value) == f"{path}: cannot write it (No space left on device); {WRITE_FIX}"
    assert checkpoint._handle.closed


def test_an_os_error_writing_an_in_flight_mark_or_the_submission_is_a_settings_error(tmp_path, monkeypatch):
    marks = InFlight(tmp_path / "s.csv")
    marks.path.mkdir()  # a folder in the way
    with pytest.raises(SettingsError) as error:
        marks.mark("decode", "a.mp4")
    assert str(error.value) == f"{marks.path}: cannot write it (Is a directory); {WRITE_FIX}"
    with pytest.raises(SettingsError, match=re.escape(f"{marks.path}: cannot write it (")):
        marks.clear()
    monkeypatch.setattr(submission, "write_atomic", failing(errno.EFBIG))
    with pytest.raises(SettingsError) as error:
        marks.mark("score", "b.mp4")
    assert str(error.value) == f"{marks.path}: cannot write it (File too large); {WRITE_FIX}"
    out = tmp_path / "out.csv"
    with pytest.raises(SettingsError) as error:
        write_submission(out, ["a.mp4"], {"a.mp4": 0.5}, BOUNDS)
    assert str(error.value) == f"{out}: cannot write it (File too large); {WRITE_FIX}" and not out.exists()
    assert not marks.lock.locked()  # a failed mark leaves the lock free for the other thread


def test_writing_passes_other_errors_through(tmp_path):
    with pytest.raises(KeyError):
        with submission.writing(tmp_path / "x"):
            raise KeyError("a bug, not the disk")
    with submission.writing(tmp_path / "x"):
        pass


# ------------------------------------------------------------------------------------------ issue 33: damaged records

GOOD_ROW = {"filename": "a.mp4", "label": 0.25, "reason": "ok", "seconds": 1.5, "identity": None, "dropped": ["m"]}


@pytest.mark.parametrize("change", [
    {"label": float("nan")}, {"label": float("inf")}, {"label": float("-inf")}, {"label": "nan"}, {"label": "0.5"},
    {"label": True}, {"label": None}, {"label": -0.01}, {"label": 1.01}, {"label": [0.5]},
    {"reason": None}, {"reason": 5}, {"reason": ""}, {"reason": ["ok"]},
    {"filename": 5}, {"filename": None}, {"filename": ""}, {"filename": ["a.mp4"]},
    {"seconds": "1"}, {"seconds": float("nan")}, {"seconds": -1}, {"seconds": True}, {"seconds": float("inf")},
    {"identity": "a.mp4"}, {"identity": [1]}, {"identity": 5},
    {"dropped": "abc"}, {"dropped": [1]}, {"dropped": None}, {"dropped": {"m": 1}},
], ids=lambda change: repr(change))
def test_a_record_with_a_field_of_the_wrong_type_or_range_is_damaged(change):
    with pytest.raises(ValueError, match="a checkpoint record with a field of the wrong type or range"):
        submission.record_of({**GOOD_ROW, **change})


@pytest.mark.parametrize("row_json", ["[1, 2]", '"a.mp4"', "5", "null", "{}", '{"filename": "a.mp4"}'])
def test_a_line_that_is_no_record_is_damaged(row_json):
    with pytest.raises((KeyError, TypeError)):
        submission.record_of(json.loads(row_json))


def test_a_good_record_reads_back_with_its_edge_values():
    assert submission.record_of(GOOD_ROW) == ("a.mp4", Record(0.25, "ok", 1.5, None, ("m",)))
    edges = {"label": 0, "seconds": 0, "identity": {"path": "/v/a.mp4"}}
    assert submission.record_of({**GOOD_ROW, **edges, "label": 1}) == (
        "a.mp4", Record(1.0, "ok", 0.0, {"path": "/v/a.mp4"}, ("m",)))
    without_dropped = {key: value for key, value in GOOD_ROW.items() if key != "dropped"}
    assert submission.record_of(without_dropped)[1].dropped == ()
    assert type(submission.record_of({**GOOD_ROW, "label": 0})[1].label) is float


def test_a_damaged_line_with_the_right_signature_is_scored_again_not_a_crash(folder, tmp_path, caplog):
    """Issue 33: NaN labels, a null reason and a number as filename used to crash every rerun."""
    path = tmp_path / "s.csv.partial.jsonl"
    good = json.dumps(row("a.mp4", record(folder, "a.mp4")))
    identity = json.dumps(video_identity(folder / "b.mp4"))
    damaged = [f'{{"filename": "b.mp4", "label": NaN, "reason": "ok", "seconds": 1, "identity": {identity}}}',
               f'{{"filename": "b.mp4", "label": Infinity, "reason": "ok", "seconds": 1, "identity": {identity}}}',
               f'{{"filename": "b.mp4", "label": "nan", "reason": "ok", "seconds": 1, "identity": {identity}}}',
               f'{{"filename": "c.mp4", "label": 0.5, "reason": null, "seconds": 1, "identity": {identity}}}',
               f'{{"filename": "c.mp4", "label": 0.5, "reason": 3, "seconds": 1, "identity": {identity}}}',
               f'{{"filename": 7, "label": 0.5, "reason": "ok", "seconds": 1, "identity": {identity}}}']
    path.write_text("\n".join([json.dumps({"signature": "sig", "format": 2}), good, *damaged]) + "\n")
    with caplog.at_level(logging.WARNING):
        checkpoint = Checkpoint(path, "sig", identities(folder))
    checkpoint.close()
    assert checkpoint.done == {"a.mp4": record(folder, "a.mp4")} and checkpoint.retried == []
    assert messages(caplog) == [f"{path}: line {n} is damaged; that video is scored again" for n in range(3, 9)]


def test_a_sample_that_is_a_pipe_or_a_device_is_refused_without_blocking(tmp_path):
    from tests.helpers import pipe_that_unblocks

    for sample in (pipe_that_unblocks(tmp_path / "sample.csv"), Path("/dev/zero")):
        with pytest.raises(SettingsError) as error:
            sample_filenames(sample)
        assert str(error.value).startswith(f"--sample-submission {sample}: cannot read it (not a regular file (a "
                                           "device or a pipe)); ")
