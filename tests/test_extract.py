"""extract_faces.py: crops with the kernel's detector and crop, a matching index, per-entry problems, resume, shards."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dfdc_core.faces import crop_face, crop_window, model_images, normalise
from dfdc_core.manifest import Manifest
from dfdc_core.video import decode_video
from kernel.config import load_config
from kernel.scorer import load_scorer
from tests.helpers import faceless_frames, faces_clip, write_video
from training.data.dataset import CropDataset
from training.data.extract_faces import cap_long_side, run_extraction, shard_of
from training.data.index import INDEX_COLUMNS, read_index
from training.data.sources import collect_items, find_parts
from training.extract_faces import main as extract_main

LABELS = {"REAL": 0, "FAKE": 1}


@pytest.fixture(scope="module")
def dev_extraction(dev_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dev_crops")
    run_extraction(dev_data / "videos", out, frames=2, progress=False)
    return out, read_index(out / "index.csv"), pd.read_csv(out / "problems.csv")


@pytest.mark.slow
def test_every_labelled_dev_video_with_a_face_has_crops_and_matching_labels(dev_data, dev_extraction):
    out, index, problems = dev_extraction
    metadata = json.loads((dev_data / "videos" / "metadata.json").read_text())
    labelled = {name for name, entry in metadata.items() if entry["label"] in LABELS}
    without_face = set(problems.loc[problems["status"].isin(["no_face", "decode_error"]), "video"])
    assert set(index["video"]) | without_face == labelled
    assert len(set(index["video"])) >= 0.9 * len(labelled)
    assert list(index.columns) == INDEX_COLUMNS
    for video, label, original in index[["video", "label", "original"]].drop_duplicates().itertuples(index=False):
        assert label == LABELS[metadata[video]["label"]]
        assert original == (metadata[video]["original"] or "")
    assert "unlabelled_multiface_demo.mp4" not in set(index["video"])
    assert set(problems.loc[problems["status"] == "unlabelled", "video"]) == {"unlabelled_multiface_demo.mp4"}
    assert "abofeumbvv.mp4" in set(problems.loc[problems["status"] == "original_absent", "video"])


def test_dev_crops_are_kernel_margin_crops_on_disk(dev_extraction):
    """Lossless PNGs exactly the size of the kernel's crop window (a 0.3 margin on each side), landmarks inside."""
    out, index, _ = dev_extraction
    for row in index.sample(min(20, len(index)), random_state=0).itertuples():
        assert row.path.endswith(".png")
        image = cv2.imread(str(out / row.path))
        left, top, right, bottom = crop_window(tuple(map(float, row.box.split())), 0.3)  # box rounded to 0.1 px
        assert abs(image.shape[0] - (bottom - top)) <= 1 and abs(image.shape[1] - (right - left)) <= 1
        points = np.array(row.landmarks.split(), dtype=float).reshape(5, 2)
        assert (points > 0).all() and (points[:, 0] < image.shape[1]).all() and (points[:, 1] < image.shape[0]).all()
        assert row.score >= 0.9
    assert (index.groupby("video")["frame"].nunique() <= 2).all()


def test_rerun_skips_finished_videos(dev_data, dev_extraction, caplog):
    out, index, _ = dev_extraction
    caplog.set_level(logging.INFO, logger="extract_faces")
    again, _ = run_extraction(dev_data / "videos", out, frames=2, progress=False)
    assert "0 to extract" in caplog.text
    pd.testing.assert_frame_equal(again.reset_index(drop=True), read_index(out / "index.csv"), check_dtype=False)
    assert len(again) == len(index)


def test_image_folder_dataset(tmp_path):
    """real/ and fake/ folders of face images: every image gives its faces' crops, labelled by its folder."""
    root = tmp_path / "images"
    for folder, swap in (("real", False), ("fake", True)):
        (root / folder).mkdir(parents=True)
        for seed in range(2):
            frame = faces_clip(1, swap_right=swap, seed=seed)[0]
            cv2.imwrite(str(root / folder / f"{folder}_{seed}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    index, problems = run_extraction(root, tmp_path / "out", progress=False)
    assert problems.empty, problems
    assert sorted(set(index["video"])) == ["images/fake/fake_0.png", "images/fake/fake_1.png",
                                           "images/real/real_0.png", "images/real/real_1.png"]
    assert set(index["source"]) == {"images"}
    assert (index.groupby("video").size() >= 1).all() and len(index) >= 4
    assert (index["label"] == index["part"].map({"real": 0, "fake": 1})).all()
    assert set(index["part"]) == {"real", "fake"}
    assert (index["frame"] == 0).all()
    for row in index.itertuples():
        left, top, right, bottom = crop_window(tuple(map(float, row.box.split())), 0.3)
        height, width = cv2.imread(str(tmp_path / "out" / row.path)).shape[:2]
        assert abs(height - (bottom - top)) <= 1 and abs(width - (right - left)) <= 1


def write_part(part: Path, entries: dict[str, dict], videos: list[str], seed: int = 0) -> None:
    part.mkdir(parents=True)
    (part / "metadata.json").write_text(json.dumps(entries))
    for number, name in enumerate(videos):
        write_video(part / name, faceless_frames(n=8, seed=seed + number))


@pytest.fixture()
def bad_dfdc(tmp_path) -> Path:
    """Two DFDC parts of faceless clips with every kind of bad metadata entry."""
    root = tmp_path / "dfdc"
    write_part(root / "dfdc_train_part_0", {
        "real.mp4": {"label": "REAL", "original": None},
        "fake.mp4": {"label": "FAKE", "original": "real.mp4"},
        "orphan.mp4": {"label": "FAKE", "original": "elsewhere.mp4"},
        "weird.mp4": {"label": "MAYBE", "original": None},
        "gone.mp4": {"label": "REAL", "original": None},
        "nolabel.mp4": {"original": None}}, ["real.mp4", "fake.mp4", "orphan.mp4", "weird.mp4"])
    write_part(root / "dfdc_train_part_1", {"b.mp4": {"label": "REAL"}, "c.mp4": {"label": "REAL"}},
               ["b.mp4", "c.mp4"], seed=10)
    (root / "notes").mkdir()
    return root


def test_bad_metadata_gives_a_message_per_entry_not_a_crash(bad_dfdc, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    index, problems = run_extraction(bad_dfdc, tmp_path / "out", frames=2, progress=False)
    found = set(zip(problems["video"], problems["status"]))
    assert {("weird.mp4", "bad_label"), ("gone.mp4", "missing_file"), ("nolabel.mp4", "unlabelled"),
            ("orphan.mp4", "original_absent")} <= found
    assert {(v, "no_face") for v in ("real.mp4", "fake.mp4", "orphan.mp4", "b.mp4", "c.mp4")} <= found
    assert not any(video == "weird.mp4" and status == "no_face" for video, status in found)
    assert index.empty and list(index.columns) == INDEX_COLUMNS
    assert "'MAYBE'" in caplog.text and "remove the entry" in caplog.text and "no face" in caplog.text
    assert (tmp_path / "out" / "problems.csv").is_file()


def test_shards_split_the_videos_and_merge_into_one_index(bad_dfdc, tmp_path):
    items, _ = collect_items(bad_dfdc)
    shards = [shard_of(items, shard, 3) for shard in range(3)]
    assert sorted(i.key for s in shards for i in s) == sorted(i.key for i in items)
    assert all(len(s) >= 1 for s in shards)
    out = tmp_path / "out"
    for shard in range(2):
        extract_main(["--data", str(bad_dfdc), "--out", str(out), "--frames", "2", "--shard", str(shard),
                      "--num-shards", "2"])
    records = sorted(p.relative_to(out / "records").as_posix() for p in (out / "records").rglob("*.json"))
    assert records == sorted(f"{i.key}.json" for i in items)
    assert set(pd.read_csv(out / "problems.csv")["status"]) >= {"no_face", "bad_label"}
    with pytest.raises(ValueError, match="--shard 2"):
        shard_of(items, 2, 2)


def test_layout_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metadata.json"):
        find_parts(tmp_path)
    (tmp_path / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        collect_items(tmp_path)


def test_cap_long_side_keeps_aspect_and_never_enlarges():
    assert cap_long_side(np.zeros((640, 320, 3), np.uint8), 320).shape == (320, 160, 3)
    assert cap_long_side(np.zeros((100, 50, 3), np.uint8), 320).shape == (100, 50, 3)
    image = np.zeros((640, 320, 3), np.uint8)
    assert cap_long_side(image, None) is image


def write_dfdc(folder: Path, clips: dict[str, tuple[np.ndarray, str, str | None]]) -> Path:
    """A DFDC part: each name → (frames, label, original), H.264 files and metadata.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (frames, _, _) in clips.items():
        write_video(folder / name, frames, fps=10)
    metadata = {name: {"label": label, "original": original} for name, (_, label, original) in clips.items()}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def two_person_extraction(tmp_path_factory):
    """A real clip of two faces (and a small face in a picture), its fake with only the right face changed, and a
    fake whose original is not in the data."""
    root = tmp_path_factory.mktemp("two_persons")
    data = write_dfdc(root / "part", {
        "real.mp4": (faces_clip(small_face=True), "REAL", None),
        "fake.mp4": (faces_clip(small_face=True, swap_right=True), "FAKE", "real.mp4"),
        "orphan.mp4": (faces_clip(swap_right=True, seed=1), "FAKE", "gone.mp4")})
    index, _ = run_extraction(data, root / "crops", frames=4, progress=False)
    return root, data, index


def test_training_tensor_is_the_kernels_tensor(two_person_extraction, tiny_manifest_path):
    """For the same video and box, train_fold's input equals the kernel's (before augmentation) within 1/255."""
    root, data, index = two_person_extraction
    config = load_config(frames=4)
    scorer = load_scorer(Manifest.load(tiny_manifest_path), config)
    frames, numbers = decode_video(data / "real.mp4", config)
    tracks = scorer.find_tracks(frames)
    rows = index[index["video"] == "real.mp4"].reset_index(drop=True)
    assert len(rows) == sum(len(t.detections) for t in tracks) == 8
    dataset = CropDataset(rows, root / "crops", 96, (0.5,) * 3, (0.25,) * 3)
    for track in tracks:
        for detection in track.detections:
            kernel = normalise(model_images([crop_face(frames[detection.frame], detection.box, 0.3)], 96),
                               (0.5,) * 3, (0.25,) * 3)[0]
            row = rows[(rows["frame"] == numbers[detection.frame]) & (rows["person"] == track.person)].index[0]
            assert (dataset[row][0] - kernel).abs().max() * 0.25 <= 1 / 255


def test_background_face_is_left_out_and_only_the_manipulated_person_is_fake(two_person_extraction):
    _, _, index = two_person_extraction
    boxes = {video: {p: float(rows["box"].iloc[0].split()[0]) for p, rows in group.groupby("person")}
             for video, group in index.groupby("video")}
    assert len(boxes["real.mp4"]) == 2  # the 60 px face in the picture is under half the size of the others
    assert len(boxes["fake.mp4"]) == 1 and min(boxes["fake.mp4"].values()) > 240  # the right face: changed
    assert len(boxes["orphan.mp4"]) == 1  # no original to compare with: only the longest track is kept
    assert (index.loc[index["video"] != "real.mp4", "label"] == 1).all()


def test_changed_settings_extract_again(two_person_extraction, caplog):
    root, data, _ = two_person_extraction
    caplog.set_level(logging.INFO, logger="extract_faces")
    run_extraction(data, root / "crops", frames=4, progress=False)
    assert "3 already done, 0 to extract" in caplog.text
    index, _ = run_extraction(data, root / "crops", frames=3, progress=False)
    assert "0 already done, 3 to extract (3 frames each)" in caplog.text
    assert index.groupby("video")["frame"].nunique().max() == 3
