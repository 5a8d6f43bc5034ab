"""kernel.explain: PNG + JSON for a real video whose score is the kernel's, a face crop image, clear errors."""
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel import predict
from kernel.config import load_config
from kernel.explain import main as explain_main
from tests.helpers import faceless_frames

VIDEO = "ffc40_nt_720_672.mp4"
FRAMES = 8


def explain_json(out) -> dict:
    return json.loads(next(out.glob("*_explain.json")).read_text())


def test_video_explanation_has_the_kernels_score(dev_data, tiny_manifest_path, tmp_path):
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"filename": [VIDEO], "label": 0.5}).to_csv(sample, index=False)
    run = predict(dev_data / "videos", sample, tiny_manifest_path, tmp_path / "submission.csv",
                  config=load_config(frames=FRAMES), progress=False)
    assert run.reasons == {VIDEO: "ok"}
    out = tmp_path / "explain"
    assert explain_main([str(dev_data / "videos" / VIDEO), "--manifest", str(tiny_manifest_path), "--out", str(out),
                         "--frames", str(FRAMES), "--rows", "2"]) == 0
    assert (out / "ffc40_nt_720_672_explain.png").read_bytes()[:4] == b"\x89PNG"
    data = explain_json(out)
    assert data["label"] == run.submission["label"].iloc[0]
    assert data["kind"] == "video" and data["frames_sampled"] == FRAMES and data["combined_by"] == "mean of models"
    assert len(data["faces"]) >= FRAMES // 2 and {f["person"] for f in data["faces"]} == {0}
    assert data["score"] == pytest.approx(np.mean(list(data["model_scores"].values())))
    assert [m["cam_layer"] for m in data["models"]] == ["bn2", "layer4"]
    assert not list(out.glob(".*tmp"))


def test_image_as_face_crop(tiny_manifest_path, tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8))
    out = tmp_path / "explain"
    assert explain_main([str(image), "--crop", "--manifest", str(tiny_manifest_path), "--out", str(out)]) == 0
    data = explain_json(out)
    (face,) = data["faces"]
    assert data["kind"] == "crop" and face["box"] == [0.0, 0.0, 70.0, 90.0]
    assert data["score"] == pytest.approx(np.mean(list(face["probs"].values())))
    assert (out / "face_explain.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("case,message", [("missing", "no such file"), ("garbage", "cannot"),
                                          ("faceless", "no face found"), ("crop_of_video", "--crop needs an image")])
def test_errors_name_the_file(tiny_manifest_path, tmp_path, capsys, case, message):
    path = {"missing": tmp_path / "nope.mp4", "garbage": tmp_path / "garbage.jpg",
            "faceless": tmp_path / "faceless.png", "crop_of_video": tmp_path / "clip.mp4"}[case]
    if case == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    elif case == "faceless":
        cv2.imwrite(str(path), faceless_frames(1)[0])
    elif case == "crop_of_video":
        path.write_bytes(b"not really a video")
    extra = ["--crop"] if case == "crop_of_video" else []
    assert explain_main([str(path), "--manifest", str(tiny_manifest_path), "--out", str(tmp_path / "o"), *extra]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and message in error
    assert not (tmp_path / "o").exists()


def test_empty_manifest_is_a_clear_error(tmp_path, capsys):
    manifest = tmp_path / "weights_manifest.json"
    manifest.write_text('{"models": [], "stacker": null}')
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    assert explain_main([str(image), "--crop", "--manifest", str(manifest)]) == 2
    assert "'models' is empty" in capsys.readouterr().err
