"""dfdc_core.mtcnn: the same faces as facenet-pytorch's MTCNN, on real frames; nothing on blank or tiny images."""
import numpy as np
import pytest
import torch

from dfdc_core.faces import FaceDetector, box_iou, detection_scale, resize_frames
from dfdc_core.mtcnn import detect_faces, pyramid_scales
from dfdc_core.video import read_frames

THRESHOLDS = (0.7, 0.8, 0.9)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(thresholds=THRESHOLDS)


def test_pyramid_scales_follow_mtcnn():
    scales = pyramid_scales(270, 480, min_face_size=20)
    assert scales[0] == pytest.approx(0.6)
    assert all(b / a == pytest.approx(0.709) for a, b in zip(scales, scales[1:]))
    assert 270 * scales[-1] >= 12 > 270 * scales[-1] * 0.709
    assert pyramid_scales(16, 16, min_face_size=20) == []


@pytest.mark.parametrize("shape", [(3, 16, 16, 3), (2, 120, 160, 3)])
def test_no_faces_in_blank_or_tiny_frames(detector, shape):
    found = detect_faces(np.full(shape, 128, np.uint8), detector.nets, 20, THRESHOLDS, torch.device("cpu"))
    assert len(found) == shape[0]
    assert all(boxes.shape == (0, 4) and scores.shape == (0,) and points.shape == (0, 5, 2)
               for boxes, scores, points in found)


@pytest.mark.slow
def test_same_faces_as_facenet_pytorch(dev_data, detector):
    """Every face facenet-pytorch's MTCNN finds (score >= 0.9) on real dev frames is found again, same box and
    the same five landmarks."""
    from facenet_pytorch import MTCNN

    reference = MTCNN(keep_all=True, min_face_size=20, thresholds=list(THRESHOLDS), post_process=False)
    ious, point_errors, reference_faces, our_faces = [], [], 0, 0
    for name in ("ffc23_yt_519.mp4", "brtujopkby.mp4", "ffc40_df_183_253.mp4"):
        frames, _ = read_frames(dev_data / "videos" / name, 8)
        small = resize_frames(frames, detection_scale(*frames.shape[1:3], 480))
        ours = detect_faces(small, detector.nets, 20, THRESHOLDS, torch.device("cpu"))
        boxes, probs, points = reference.detect(small, landmarks=True)
        for (our_boxes, our_scores, our_points), ref_boxes, ref_probs, ref_points in zip(ours, boxes, probs, points):
            confident = [] if ref_boxes is None else [(b, q) for b, p, q in zip(ref_boxes, ref_probs, ref_points)
                                                      if p >= 0.9]
            reference_faces += len(confident)
            our_faces += int((our_scores >= 0.9).sum())
            for ref_box, ref_point in confident:
                overlaps = [box_iou(tuple(ref_box), tuple(box)) for box in our_boxes]
                ious.append(max(overlaps, default=0.0))
                if overlaps:
                    best = int(np.argmax(overlaps))
                    side = ref_box[2] - ref_box[0]
                    point_errors.append(np.linalg.norm(our_points[best] - np.asarray(ref_point, float), axis=1).mean() / side)
    assert reference_faces >= 24
    assert abs(our_faces - reference_faces) <= 2
    assert np.median(ious) > 0.9 and np.mean(np.array(ious) > 0.7) == 1.0
    assert np.median(point_errors) < 0.03  # landmarks within 3 % of the face width of facenet-pytorch's
