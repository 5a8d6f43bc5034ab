import json

import cv2
import numpy as np
import pytest
import torch

from kernel.config import load_config
from kernel.faces import (Detection, FaceDetector, brighten_dark, center_shift, crop_face, detection_scale,
                          filter_detections, isotropic_resize_pad, link_tracks, normalise)
from kernel.video import read_frames


def test_crop_adds_margin_and_clips_to_frame():
    frame = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    crop = crop_face(frame, (100, 50, 200, 150), margin=0.3)
    assert crop.shape == (160, 160, 3)
    assert np.array_equal(crop, frame[20:180, 70:230])
    corner = crop_face(frame, (0, 0, 50, 40), margin=0.3)
    assert corner.shape == (52, 65, 3)  # clipped at the top-left edge


@pytest.mark.parametrize("shape,size", [((100, 50, 3), 64), ((30, 90, 3), 96), ((300, 300, 3), 224)])
def test_isotropic_resize_pad_keeps_aspect_and_centres(shape, size):
    image = np.full(shape, 200, dtype=np.uint8)
    out = isotropic_resize_pad(image, size)
    assert out.shape == (size, size, 3)
    rows, cols = np.nonzero(out[..., 0])
    content_h, content_w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(content_h, content_w) == size
    assert abs(content_h / content_w - shape[0] / shape[1]) < 0.1
    assert abs((rows.min() + rows.max()) / 2 - (size - 1) / 2) <= 1 and abs((cols.min() + cols.max()) / 2 - (size - 1) / 2) <= 1


def test_normalise_matches_definition():
    crops = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = normalise(crops, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    expected = (crops.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.4, 0.3])[None, :, None, None]) \
        / np.array([0.2, 0.25, 0.5])[None, :, None, None]
    assert out.shape == (2, 3, 8, 8) and out.dtype == torch.float32
    assert np.allclose(out.numpy(), expected, atol=1e-5)


def test_detection_scale_from_resolution():
    assert detection_scale(1080, 1920, 480) == pytest.approx(0.25)
    assert detection_scale(1920, 1080, 480) == pytest.approx(0.25)
    assert detection_scale(200, 300, 480) == 1.0


def test_brighten_dark_only_lifts_dark_frames():
    dark = np.full((2, 10, 10, 3), 25, dtype=np.uint8)
    lifted = brighten_dark(dark)
    assert 90 < lifted.mean() < 130
    bright = np.full((2, 10, 10, 3), 120, dtype=np.uint8)
    assert brighten_dark(bright) is bright


def _det(frame, x, y, side=40.0, score=0.99):
    return Detection(frame, (x, y, x + side, y + side), score)


def test_tracks_follow_two_people_and_drop_spurious_faces():
    per_frame = []
    for f in range(10):
        faces = [_det(f, 100 + 15 * f, 100), _det(f, 400, 300 - 10 * f)]  # both move, no overlap in IoU terms
        if f == 4:
            faces.append(_det(f, 800, 50, side=30))  # a one-frame false positive
        per_frame.append(faces)
    tracks = link_tracks(per_frame)
    assert len(tracks) == 2
    assert all(len(t.detections) == 10 for t in tracks)
    for track in tracks:
        xs = [d.box[0] for d in track.detections]
        assert len({x >= 400 for x in xs}) == 1 or xs == sorted(xs)  # never jumps between people
    assert center_shift((0, 0, 10, 10), (10, 0, 20, 10)) == pytest.approx(1.0)


def test_filter_drops_small_and_unsure_faces():
    per_frame = [[_det(0, 0, 0, side=100), _det(0, 200, 0, side=10), _det(0, 400, 0, score=0.5)]]
    kept = filter_detections(per_frame, min_score=0.9, min_size=24)
    assert [d.box[0] for d in kept[0]] == [0]


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(2)
    config = load_config()
    return FaceDetector(detect_long_side=config["detect_long_side"], min_face_size=config["mtcnn_min_face_size"])


def test_detector_finds_every_face_in_a_group_photo(dev_data, detector):
    image = cv2.cvtColor(cv2.imread(str(dev_data / "frames" / "multiface.jpg")), cv2.COLOR_BGR2RGB)
    faces = filter_detections(detector.detect(image[None]), 0.9, 24)[0]
    assert len(faces) >= 3
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]


def test_faces_found_in_95_percent_of_frames_of_labelled_full_frame_videos(dev_data, detector):
    """Every labelled FF++ and DFDC full-frame dev video (8 sampled frames each); crops have the model size."""
    config = load_config()
    metadata = json.loads((dev_data / "videos" / "metadata.json").read_text())
    names = [n for n, e in sorted(metadata.items()) if e["label"] and not n.startswith("dfdccrop")]
    assert len(names) >= 40
    found = total = 0
    for name in names:
        frames, _ = read_frames(dev_data / "videos" / name, 8)
        per_frame = filter_detections(detector.detect(frames), config["min_face_score"], config["min_face_px"])
        found += sum(1 for faces in per_frame if faces)
        total += len(per_frame)
        tracks = link_tracks(per_frame)
        if tracks:
            d = tracks[0].detections[0]
            crop = isotropic_resize_pad(crop_face(frames[d.frame], d.box, config["crop_margin"]), 224)
            assert crop.shape == (224, 224, 3) and crop.std() > 5
    assert found / total >= 0.95, f"faces in {found}/{total} sampled frames"
