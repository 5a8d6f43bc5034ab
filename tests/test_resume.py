"""Resume after a crash (issue 12): a checkpoint record is reused only for the same set-up and the same video
file; environment fallbacks are retried; foreign or stale checkpoints are set aside; a torn last line is cut."""
import json
import logging
from pathlib import Path

import kernel.pipeline as pipeline
from kernel import predict
from kernel.config import load_config
from kernel.submission import Checkpoint, Record, video_identity
from tests.helpers import faceless_frames, write_video

FAST = load_config(frames=4)


def run_recording_decodes(monkeypatch, videos: Path, sample: Path, manifest: Path, out: Path):
    """`predict`, with the names of the videos it decoded."""
    decoded = []
    real_read = pipeline.decode_video

    def recording(path, *args):
        decoded.append(Path(path).name)
        return real_read(path, *args)

    monkeypatch.setattr(pipeline, "decode_video", recording)
    return predict(videos, sample, manifest, out, config=FAST, progress=False), decoded


def test_resume_rescores_changed_videos_and_retries_environment_fallbacks(monkeypatch, tiny_manifest_path,
                                                                          tmp_path, caplog):
    videos = tmp_path / "videos"
    write_video(videos / "same.mp4", faceless_frames(10, 96, 128, seed=1))
    write_video(videos / "replaced.mp4", faceless_frames(10, 96, 128, seed=2))
    sample = tmp_path / "sample.csv"
    sample.write_text("filename,label\nsame.mp4,0\nreplaced.mp4,0\nlate.mp4,0\n")
    out = tmp_path / "submission.csv"
    first, decoded = run_recording_decodes(monkeypatch, videos, sample, tiny_manifest_path, out)
    assert first.reasons == {"same.mp4": "no_face", "replaced.mp4": "no_face", "late.mp4": "missing_file"}
    write_video(videos / "replaced.mp4", faceless_frames(14, 120, 160, seed=3))  # another file, same name
    write_video(videos / "late.mp4", faceless_frames(10, 96, 128, seed=4))  # the file now there
    with caplog.at_level(logging.WARNING, logger="kernel"):
        second, decoded = run_recording_decodes(monkeypatch, videos, sample, tiny_manifest_path, out)
    assert sorted(decoded) == ["late.mp4", "replaced.mp4"]
    assert second.reasons == {"same.mp4": "no_face", "replaced.mp4": "no_face", "late.mp4": "no_face"}
    assert "set aside as submission.csv.partial.jsonl.stale-1" in caplog.text and "replaced.mp4" in caplog.text
    assert (tmp_path / "submission.csv.partial.jsonl.stale-1").is_file()
    third, decoded = run_recording_decodes(monkeypatch, videos, sample, tiny_manifest_path, out)
    assert decoded == [] and third.reasons == second.reasons


def identity_of(folder: Path):
    return lambda name: video_identity(folder / name)


def test_a_foreign_checkpoint_is_set_aside_not_reused(tmp_path, caplog):
    (tmp_path / "a.mp4").write_bytes(b"x")
    path = tmp_path / "s.csv.partial.jsonl"
    old = Checkpoint(path, "set-up one", identity_of(tmp_path))
    old.add("a.mp4", Record(0.9, "ok", 1.0, video_identity(tmp_path / "a.mp4")))
    old.close()
    with caplog.at_level(logging.WARNING):
        new = Checkpoint(path, "set-up two", identity_of(tmp_path))
    new.close()
    assert new.done == {} and "another model/config set-up" in caplog.text
    assert "a.mp4" in (tmp_path / "s.csv.partial.jsonl.foreign-1").read_text()
    assert json.loads(path.read_text())["signature"] == "set-up two"


def test_a_torn_last_line_is_cut_off_before_appending(tmp_path, caplog):
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(name.encode())
    path = tmp_path / "s.csv.partial.jsonl"
    first = Checkpoint(path, "set-up", identity_of(tmp_path))
    first.add("a.mp4", Record(0.9, "ok", 1.0, video_identity(tmp_path / "a.mp4")))
    first.close()
    with open(path, "a") as handle:
        handle.write('{"filename": "b.mp4", "label": 0.7, "rea')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        second = Checkpoint(path, "set-up", identity_of(tmp_path))
    second.add("b.mp4", Record(0.2, "ok", 1.0, video_identity(tmp_path / "b.mp4")))
    second.close()
    assert "torn last line" in caplog.text
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole JSON
    assert [row.get("filename") for row in rows] == [None, "a.mp4", "b.mp4"]
    assert set(Checkpoint(path, "set-up", identity_of(tmp_path)).done) == {"a.mp4", "b.mp4"}
