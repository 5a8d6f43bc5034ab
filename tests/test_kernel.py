"""The kernel end to end: crafted bad inputs, weight checks, time budget, checkpoints, no network, real videos."""
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import kernel.pipeline as pipeline
import kernel.scorer as kernel_scorer
from dfdc_core.aggregate import Stacker, logit, sigmoid
from dfdc_core.faces import Detection, Track, face_crops, model_images, normalise
from dfdc_core.manifest import Manifest, ManifestError
from dfdc_core.models import fake_probability, forward_logits
from kernel import predict
from kernel.config import load_config
from tests.helpers import (
    DEV_DATA,
    face_videos,
    faceless_frames,
    faces_clip,
    write_video,
)

REPO = Path(__file__).resolve().parents[1]
FAST = load_config(frames=8)


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    """Crafted files the kernel must survive, with the fallback reason each must get."""
    folder = tmp_path_factory.mktemp("bad_videos")
    (folder / "zero_bytes.mp4").write_bytes(b"")
    truncated = write_video(folder / "truncated.mp4", faceless_frames(60))
    truncated.write_bytes(truncated.read_bytes()[:3000])
    (folder / "random_bytes.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    write_video(folder / "no_face.mp4", faceless_frames(40, 240, 320))
    write_video(folder / "tiny_64x64.mp4", faceless_frames(30, 64, 64, seed=1))
    return folder, {"zero_bytes.mp4": "decode_error", "truncated.mp4": "decode_error",
                    "random_bytes.mp4": "decode_error", "no_face.mp4": "no_face", "tiny_64x64.mp4": "no_face"}


def read_submission(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["filename", "label"]
    return frame


def test_bad_videos_get_the_prior_and_the_run_goes_on(bad_videos, tiny_manifest_path, tmp_path):
    folder, expected = bad_videos
    sample = tmp_path / "sample_submission.csv"
    order = sorted(expected, reverse=True) + ["not_there.mp4"]
    pd.DataFrame({"filename": order, "label": 0}).to_csv(sample, index=False)
    out = tmp_path / "submission.csv"
    run = predict(folder, sample, tiny_manifest_path, out, config=dict(FAST, prior=0.42), progress=False)
    submission = read_submission(out)
    assert submission["filename"].tolist() == order
    assert np.allclose(submission["label"], 0.42)
    assert run.reasons == dict(expected, **{"not_there.mp4": "missing_file"})
    assert run.fallback_counts == {"decode_error": 3, "missing_file": 1, "no_face": 2}


def test_an_error_anywhere_costs_one_video(monkeypatch, bad_videos, tiny_manifest_path, tmp_path):
    folder, _ = bad_videos
    monkeypatch.setattr(kernel_scorer.Scorer, "find_tracks", lambda self, frames: 1 / 0)
    run = predict(folder, None, tiny_manifest_path, tmp_path / "s.csv", config=FAST, progress=False)
    assert run.reasons["no_face.mp4"] == "error:ZeroDivisionError"
    assert len(read_submission(tmp_path / "s.csv")) == 5


@pytest.mark.parametrize("damage,message", [("sha", "sha256"), ("missing", "missing"), ("bytes", "bytes")])
def test_weights_are_checked_before_the_first_video(monkeypatch, tiny_manifest_path, tmp_path, damage, message):
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    manifest = json.loads((folder / "weights_manifest.json").read_text())
    weights = folder / manifest["models"][1]["file"]
    if damage == "sha":
        manifest["models"][1]["sha256"] = "0" * 64
    elif damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-10])
    (folder / "weights_manifest.json").write_text(json.dumps(manifest))
    videos = face_videos(tmp_path / "videos", 2)
    read = []
    monkeypatch.setattr(pipeline, "decode_video", lambda path, *a, **k: read.append(path.name) or 1 / 0)
    with pytest.raises(ManifestError, match=message) as error:
        predict(videos, None, folder / "weights_manifest.json", tmp_path / "s.csv", config=FAST, progress=False)
    assert weights.name in str(error.value)
    assert read == [] and sorted(p.name for p in tmp_path.iterdir()) == ["models", "videos"]  # not even a checkpoint


def test_time_budget_gives_the_rest_the_prior(monkeypatch, bad_videos, tiny_manifest_path, tmp_path):
    folder, expected = bad_videos
    clock = iter(range(0, 10**9, 1000))  # every reading of the clock is 1000 s later
    monkeypatch.setattr(pipeline, "time", types.SimpleNamespace(monotonic=lambda: next(clock),
                                                                perf_counter=pipeline.time.perf_counter))
    run = predict(folder, None, tiny_manifest_path, tmp_path / "s.csv", config=dict(FAST, time_budget_hours=1),
                  progress=False)
    reasons = list(run.reasons.values())
    # at 1000 s per clock reading, the first video fits in the hour and the estimate for a second does not
    assert reasons[0] != "time_budget" and reasons[1:] == ["time_budget"] * (len(reasons) - 1)
    assert len(read_submission(tmp_path / "s.csv")) == len(expected)
    zero = predict(folder, None, tiny_manifest_path, tmp_path / "z.csv", config=dict(FAST, time_budget_hours=0),
                   progress=False)
    assert set(zero.reasons.values()) == {"time_budget"} and zero.videos_scored == 0


def test_a_crash_loses_nothing_already_predicted(monkeypatch, bad_videos, tiny_manifest_path, tmp_path):
    folder, expected = bad_videos
    out = tmp_path / "submission.csv"
    real_score = kernel_scorer.Scorer.score
    calls = []

    def crash_on_second(self, frames):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # not caught per video: the run dies
        return real_score(self, frames)

    monkeypatch.setattr(kernel_scorer.Scorer, "score", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        predict(folder, None, tiny_manifest_path, out, config=FAST, progress=False)
    assert not out.exists()
    checkpoint = out.with_name(out.name + ".partial.jsonl")
    records = [json.loads(line) for line in checkpoint.read_text().splitlines()[1:]]
    kept = {r["filename"] for r in records if r["reason"] != "decode_error"}  # decode errors are retried
    assert len(records) >= 2 and kept
    monkeypatch.setattr(kernel_scorer.Scorer, "score", real_score)
    seen = []

    def record_and_fail(path, *args):
        seen.append(path.name)
        raise pipeline.VideoReadError(f"{path}: decoded again")

    monkeypatch.setattr(pipeline, "decode_video", record_and_fail)
    run = predict(folder, None, tiny_manifest_path, out, config=FAST, progress=False)
    assert sorted(seen) == sorted(set(expected) - kept)  # finished videos were not decoded again
    assert len(read_submission(out)) == len(expected) and run.videos_scored == len(seen)


def test_faces_are_cut_with_the_crop_margin_the_manifests_models_were_trained_with(tiny_manifest_path, tmp_path):
    frames = pipeline.decode_video(face_videos(tmp_path / "videos", 1) / "face_0.mp4", FAST)[0]
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    manifest = json.loads((folder / "weights_manifest.json").read_text())
    for entry in manifest["models"]:
        entry["crop_margin"] = 0.05
    (folder / "weights_manifest.json").write_text(json.dumps(manifest))
    scorer = kernel_scorer.load_scorer(Manifest.load(folder / "weights_manifest.json"), FAST)
    assert scorer.config["crop_margin"] == 0.05 and FAST["crop_margin"] == 0.3  # the caller's config is not changed
    tracks = scorer.find_tracks(frames)
    prediction = scorer.score_tracks(frames, tracks)
    tight = face_crops(frames, tracks, 0.05)
    assert [crop.shape for crop in prediction.crops] == [crop.shape for crop in tight]
    assert [crop.shape for crop in tight] != [crop.shape for crop in face_crops(frames, tracks, 0.3)]
    for name, probs in scorer.classify_crops(tight).items():
        assert np.allclose(prediction.face_probs[name], probs)


@pytest.mark.slow
def test_stacker_from_the_manifest_is_applied(tiny_manifest_path, tmp_path):
    """Each coefficient meets its own group's feature (names listed against sorted order), then the clip."""
    videos = face_videos(tmp_path / "videos", 2)
    frames = pipeline.decode_video(videos / "face_0.mp4", FAST)[0]
    scorer = kernel_scorer.load_scorer(Manifest.load(tiny_manifest_path), FAST)
    scores = scorer.score(frames).model_scores  # no stacker: raw scores
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    manifest = json.loads((folder / "weights_manifest.json").read_text())
    names = sorted((m["name"] for m in manifest["models"]), reverse=True)
    stacker = {"feature_names": [f"{name}.logit" for name in names], "coef": [1.5, -0.7], "intercept": 0.3}
    (folder / "stacker.json").write_text(json.dumps(stacker))
    manifest["stacker"] = "stacker.json"
    (folder / "weights_manifest.json").write_text(json.dumps(manifest))
    config = dict(FAST, clip=[0.001, 0.999])
    run = predict(videos, None, folder / "weights_manifest.json", tmp_path / "s.csv", config=config, progress=False)
    assert run.reasons == {"face_0.mp4": "ok", "face_1.mp4": "ok"}
    assert abs(logit(scores[names[0]]) - logit(scores[names[1]])) > 1e-3  # swapped coefficients would show
    expected = sigmoid(1.5 * logit(scores[names[0]]) - 0.7 * logit(scores[names[1]]) + 0.3)
    assert read_submission(tmp_path / "s.csv")["label"][0] == pytest.approx(expected, abs=2e-6)
    stacker["intercept"] = 30.0  # far past the upper clip
    (folder / "stacker.json").write_text(json.dumps(stacker))
    predict(videos, None, folder / "weights_manifest.json", tmp_path / "s.csv", config=config, progress=False)
    assert read_submission(tmp_path / "s.csv")["label"].tolist() == [0.999, 0.999]


REAL_VIDEOS = ["abofeumbvv.mp4", "brtujopkby.mp4", "ffc23_yt_519.mp4", "ffc40_df_183_253.mp4",
               "ffc40_actor_07__talking_against_wall.mp4", "dfdccrop_0_aayrffkzxn_0_0.mp4"]


@pytest.fixture()
def labelled_videos(tmp_path) -> tuple[Path, list[str], Path]:
    """Videos with a DFDC metadata.json: real dev videos (linked, never copied), else generated face clips."""
    videos = tmp_path / "videos"
    videos.mkdir()
    if (DEV_DATA / "videos" / "metadata.json").is_file():
        for name in REAL_VIDEOS:
            os.symlink(DEV_DATA / "videos" / name, videos / name)
        return videos, REAL_VIDEOS, DEV_DATA / "videos" / "metadata.json"
    names = [write_video(videos / f"clip_{i}.mp4", faces_clip(8, swap_right=bool(i % 2), seed=i)).name for i in range(4)]
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({name: {"label": "FAKE" if i % 2 else "REAL"} for i, name in enumerate(names)}))
    return videos, names, metadata


@pytest.mark.slow
def test_real_videos_give_a_valid_submission_offline(labelled_videos, tiny_manifest_path, tmp_path):
    """`python -m kernel --block-network` with two tiny random models, a --config file and --prior, then validate."""
    videos, names, metadata = labelled_videos
    (videos / "broken.mp4").write_bytes(b"\x00" * 100)
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"filename": ["broken.mp4"] + names, "label": 0.5}).to_csv(sample, index=False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"clip": [0.02, 0.98], "frames": 16}))
    out = tmp_path / "working" / "submission.csv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    result = subprocess.run(
        [sys.executable, "-m", "kernel", "--block-network", "--videos", str(videos), "--sample-submission",
         str(sample), "--manifest", str(tiny_manifest_path), "--out", str(out), "--device", "cpu", "--frames", "8",
         "--config", str(config), "--prior", "0.004", "--no-progress"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    submission = read_submission(out)
    assert submission["filename"].tolist() == ["broken.mp4"] + names
    assert submission["label"][0] == 0.02  # the prior 0.004, clipped to the config's bounds
    assert submission["label"].between(0.02, 0.98).all() and submission["label"][1:].nunique() > 1
    assert "broken.mp4: decode_error" in result.stderr and "using 0.00" in result.stderr
    assert "fallbacks: decode_error 1" in result.stderr and "s/video: decode" in result.stderr
    plots = tmp_path / "plots"
    validated = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(out), "--metadata",
                                str(metadata), "--plots", str(plots), "--allow-partial"], cwd=REPO,
                               capture_output=True, text=True)
    assert validated.returncode == 0, validated.stderr
    assert "log loss:" in validated.stdout and f"videos scored: {len(names)}" in validated.stdout
    assert (plots / "confusion_matrix.png").stat().st_size > 1000 and (plots / "roc.png").stat().st_size > 1000


def test_block_network_refuses_connections_and_lookups():
    probe = ("import socket\n"
             "from kernel.offline import NetworkBlocked, block_network\n"
             "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()\n"
             "socket.create_connection(server.getsockname(), timeout=1).close()\n"  # works before
             "block_network()\n"
             "for attempt in (lambda: socket.create_connection(server.getsockname(), timeout=1),\n"
             "                lambda: socket.socket().connect(server.getsockname()),\n"
             "                lambda: socket.getaddrinfo('pypi.org', 443)):\n"
             "    try:\n"
             "        attempt()\n"
             "    except NetworkBlocked:\n"
             "        print('blocked')\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["blocked"] * 3, result.stderr


@pytest.mark.slow
def test_cli_reports_a_bad_manifest_clearly(tmp_path):
    manifest = tmp_path / "weights_manifest.json"
    manifest.write_text('{"models": [], "stacker": null}')
    result = subprocess.run([sys.executable, "-m", "kernel", "--videos", str(tmp_path), "--manifest", str(manifest),
                             "--out", str(tmp_path / "s.csv")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "'models' is empty" in result.stderr


def test_detection_leaves_a_core_to_the_decoder_and_restores_threads(monkeypatch):
    import torch

    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # the machine's cores; the process may run on fewer
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 7})  # as under taskset or a container CPU set
    assert kernel_scorer.available_cores() == 3
    assert kernel_scorer.detection_threads({"detect_threads": None}, "cpu") == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert kernel_scorer.detection_threads({"detect_threads": None}, "cpu") == 1
    assert kernel_scorer.detection_threads({"detect_threads": 3}, "cpu") == 3
    assert kernel_scorer.detection_threads({"detect_threads": None}, "cuda") is None
    before = torch.get_num_threads()
    with kernel_scorer.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_decoding_thread_works_ahead_and_starts_nothing_after_a_crash(monkeypatch, tmp_path):
    """`prefetch_videos` decoded videos wait while one is scored; once the run dies no new decode starts."""
    started = []

    def decode(path: Path, config: dict) -> tuple[np.ndarray, np.ndarray]:
        started.append(path.name)
        return np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1)

    monkeypatch.setattr(pipeline, "decode_video", decode)
    names = [f"v{i}.mp4" for i in range(10)]
    stop = threading.Event()
    videos = pipeline.prefetch_frames(tmp_path, names, dict(FAST, prefetch_videos=2), stop)
    with pytest.raises(KeyboardInterrupt):
        try:  # as `predict` runs it
            for filename, frames, _, _ in videos:
                assert filename == "v0.mp4" and frames.shape == (1, 2, 2, 3)
                deadline = time.monotonic() + 30
                while len(started) < 4 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.3)  # would it decode more?
                assert started == names[:4]  # v0 in hand, v1 and v2 queued, v3 decoded and waiting for a slot
                raise KeyboardInterrupt  # the scoring dies
        finally:
            stop.set()
    time.sleep(0.3)
    videos.close()  # joins the decoding thread
    assert started == names[:4] and not [t for t in threading.enumerate() if t.name == "decode"]


def test_the_aggregation_is_the_configs_unless_the_stacker_names_its_own(tiny_manifest_path, monkeypatch):
    """`--aggregation` (the config's) turns frame scores into the video score; a stacker's own aggregation wins."""
    scorer = kernel_scorer.load_scorer(Manifest.load(tiny_manifest_path), dict(FAST, aggregation="trimmed_mean"))
    names = [model.spec.name for model in scorer.models]
    probs = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0])
    monkeypatch.setattr(scorer, "classify_crops", lambda crops: {name: probs for name in names})
    track = Track(person=0, detections=[Detection(frame, (0, 0, 10, 10), 0.99) for frame in range(10)])
    crops = [np.zeros((4, 4, 3), np.uint8)] * 10
    assert scorer.score_crops(crops, [track]).score == pytest.approx(0.45)  # the mean of 0.2 ... 0.7
    scorer.stacker = Stacker([f"{names[0]}.logit"], [1.0], 0.0, aggregation="mean")
    assert scorer.score_crops(crops, [track]).score == pytest.approx(0.46)  # the plain mean, through logit/sigmoid


def flip_probs(model: kernel_scorer.LoadedModel, crops: list[np.ndarray], flip: bool) -> np.ndarray:
    """P(fake) of `crops` under a loaded model, computed here with or without flip TTA."""
    images = normalise(model_images(crops, model.spec.input_size), model.spec.mean, model.spec.std)
    with torch.inference_mode():
        return fake_probability(forward_logits(model.module, images, flip)).numpy()


def test_each_model_scores_with_the_flip_tta_its_manifest_entry_records(tiny_manifest_path, tmp_path, caplog):
    """The stacker was fitted on OOF scores made with (or without) flip TTA: each model scores as its entry says,
    whatever the config's tta_hflip; an entry that records nothing follows the config."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    data = json.loads((folder / "weights_manifest.json").read_text())
    data["models"][0]["tta_hflip"], data["models"][1]["tta_hflip"] = True, False
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    manifest = Manifest.load(folder / "weights_manifest.json")
    crops = [np.random.default_rng(seed).integers(0, 255, (40, 32, 3), dtype=np.uint8) for seed in range(3)]
    caplog.set_level(logging.INFO, logger="kernel")
    for config_flip in (False, True):
        caplog.clear()
        scorer = kernel_scorer.load_scorer(manifest, dict(FAST, tta_hflip=config_flip))
        probs = scorer.classify_crops(crops)
        for model, flip in zip(scorer.models, (True, False)):
            assert np.allclose(probs[model.spec.name], flip_probs(model, crops, flip), atol=1e-6)
            assert not np.allclose(probs[model.spec.name], flip_probs(model, crops, not flip), atol=1e-6)
        overridden = data["models"][1 if config_flip else 0]["name"]
        message = (f"{manifest.path}: models ['{overridden}'] score {'without' if config_flip else 'with'} flip TTA, "
                   f"as their OOF scores were made for the stacker (the config's tta_hflip is "
                   f"{str(config_flip).lower()})")
        assert [r.getMessage() for r in caplog.records if "flip TTA" in r.getMessage()] == [message]
    del data["models"][0]["tta_hflip"]
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    scorer = kernel_scorer.load_scorer(Manifest.load(folder / "weights_manifest.json"), dict(FAST, tta_hflip=True))
    model = scorer.models[0]
    assert np.allclose(scorer.classify_crops(crops)[model.spec.name], flip_probs(model, crops, True),
                       atol=1e-6)  # the config's


@pytest.mark.slow
def test_a_folder_of_a_video_and_photos_is_scored_and_validated(tiny_manifest_path, tmp_path):
    """Images are one-frame videos: listed beside the videos, each face cut from the photo padded by its edges
    (as training cuts stills), scored; kernel.validate reads the submission against a DFDC-style metadata.json."""
    import cv2

    from tests.helpers import lfw_face

    folder = tmp_path / "media"
    write_video(folder / "clip.mp4", faces_clip(8), fps=10)
    cv2.imwrite(str(folder / "photo.jpg"), cv2.cvtColor(faces_clip(1, seed=3)[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "tight_face.png"), lfw_face(2, 160))
    cv2.imwrite(str(folder / "blank.webp"), np.full((90, 120, 3), 128, np.uint8))
    (folder / "notes.txt").write_text("not media")
    out = tmp_path / "submission.csv"
    run = predict(folder, None, tiny_manifest_path, out, config=FAST, progress=False)
    submission = read_submission(out)
    assert submission["filename"].tolist() == ["blank.webp", "clip.mp4", "photo.jpg", "tight_face.png"]
    assert run.reasons == {"blank.webp": "no_face", "clip.mp4": "ok", "photo.jpg": "ok", "tight_face.png": "ok"}
    metadata = tmp_path / "metadata.json"
    metadata.write_text(json.dumps({"clip.mp4": {"label": "FAKE"}, "photo.jpg": {"label": "REAL"},
                                    "tight_face.png": {"label": "FAKE"}, "blank.webp": {"label": "REAL"}}))
    validated = subprocess.run([sys.executable, "-m", "kernel.validate", "--submission", str(out), "--metadata",
                                str(metadata)], cwd=REPO, capture_output=True, text=True)
    assert validated.returncode == 0, validated.stderr
    assert "videos scored: 4" in validated.stdout and "log loss:" in validated.stdout
