"""kernel.explain: PNG + JSON for a video whose score is the kernel's, a face crop image, clear errors."""
import json

import cv2
import numpy as np
import pytest

from dfdc_core.manifest import Manifest
from dfdc_core.video import decode_video
from kernel import predict
from kernel.config import load_config
from kernel.explain import main as explain_main
from kernel.explain import shown_samples
from kernel.scorer import load_scorer
from tests.helpers import faceless_frames, faces_clip, write_video

FRAMES = 8


def explain_json(out) -> dict:
    return json.loads(next(out.glob("*_explain.json")).read_text())


@pytest.mark.slow
def test_video_explanation_has_the_kernels_score(tiny_manifest_path, tmp_path):
    """The JSON's scores are those the kernel's scorer gives the same frames, and its label the submission's."""
    video = write_video(tmp_path / "videos" / "two_faces.mp4", faces_clip(40, swap_right=True))
    config = load_config(frames=FRAMES)
    run = predict(video.parent, None, tiny_manifest_path, tmp_path / "submission.csv", config=config, progress=False)
    assert run.reasons == {video.name: "ok"}
    expected = load_scorer(Manifest.load(tiny_manifest_path), config).score(decode_video(video, config)[0])
    heights = {}
    for rows in (1, 3):
        out = tmp_path / f"explain_{rows}"
        assert explain_main([str(video), "--manifest", str(tiny_manifest_path), "--out", str(out),
                             "--frames", str(FRAMES), "--rows", str(rows)]) == 0
        heights[rows] = cv2.imread(str(out / "two_faces_explain.png")).shape[0]
        assert not list(out.glob(".*tmp"))
    assert heights[1] < heights[3]  # one row of the PNG per shown frame
    data = explain_json(tmp_path / "explain_3")
    assert data["label"] == run.submission["label"].iloc[0]
    assert data["score"] == pytest.approx(expected.score, abs=1e-6)
    assert data["model_scores"] == pytest.approx(expected.model_scores, abs=1e-6)
    assert data["kind"] == "video" and data["frames_sampled"] == FRAMES and data["combined_by"] == "mean of models"
    assert len(data["faces"]) == len(expected.crops) >= FRAMES and {f["person"] for f in data["faces"]} == {0, 1}
    assert [m["cam_layer"] for m in data["models"]] == ["bn2", "layer4"]


def test_shown_frames_are_spread_over_the_frames_with_faces():
    faces = [{"sample": sample} for sample in (0, 0, 2, 3, 5, 7, 7, 9)]
    assert shown_samples(faces, 8) == [0, 2, 3, 5, 7, 9]
    assert shown_samples(faces, 3) == [0, 3, 9] and shown_samples(faces, 1) == [0]


def test_image_as_face_crop(tiny_manifest_path, tmp_path):
    """A face crop is scored whole: the JSON holds what the models give that image, not what the JSON says."""
    pixels = np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), pixels)
    out = tmp_path / "explain"
    assert explain_main([str(image), "--crop", "--manifest", str(tiny_manifest_path), "--out", str(out)]) == 0
    data = explain_json(out)
    (face,) = data["faces"]
    scorer = load_scorer(Manifest.load(tiny_manifest_path), load_config())
    probs = scorer.classify_crops([cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)])
    assert face["probs"] == pytest.approx({name: float(p[0]) for name, p in probs.items()}, abs=1e-5)
    assert data["score"] == pytest.approx(np.mean([p[0] for p in probs.values()]), abs=1e-5)
    assert data["kind"] == "crop" and face["box"] == [0.0, 0.0, 70.0, 90.0]
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


# ------------------------------------------------------------------------------------------ issue 33: bad input

@pytest.fixture()
def face_image(tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8))
    return image


def explain_error(capsys, *argv: str) -> str:
    """`python -m kernel.explain` with `argv`: it must exit 2; its message."""
    assert explain_main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_settings_are_exit_2_before_any_work(tiny_manifest_path, face_image, tmp_path, capsys):
    out = tmp_path / "o"
    base = [str(face_image), "--crop", "--manifest", str(tiny_manifest_path), "--out", str(out)]
    (tmp_path / "config.json").write_text('{"frames_per_video": 8}')
    config = str(tmp_path / "config.json")
    assert "unknown keys ['frames_per_video']" in explain_error(capsys, *base, "--config", config)
    (tmp_path / "config.json").write_text('{"crop_margin": 1e6}')
    assert "kernel setting 'crop_margin' is 1000000.0" in explain_error(capsys, *base, "--config",
                                                                        str(tmp_path / "config.json"))
    assert "kernel setting 'frames' is 0" in explain_error(capsys, *base, "--frames", "0")
    assert "--device 'meta'" in explain_error(capsys, *base, "--device", "meta")
    assert not out.exists()


@pytest.mark.parametrize("rows", ["0", "-1", "x", "1.5"])
def test_rows_must_be_a_whole_number_above_zero(tiny_manifest_path, face_image, tmp_path, capsys, rows):
    with pytest.raises(SystemExit) as exit_:
        explain_main([str(face_image), "--crop", "--manifest", str(tiny_manifest_path), "--rows", rows])
    assert exit_.value.code == 2
    assert f"argument --rows: {rows!r} is not a whole number above 0" in capsys.readouterr().err


def test_an_out_that_is_a_file_is_exit_2_and_left_alone(tiny_manifest_path, face_image, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "sub"):
        err = explain_error(capsys, str(face_image), "--crop", "--manifest", str(tiny_manifest_path), "--out", str(out))
        assert err.startswith(f"error: --out {out}: cannot write in {out} (")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_an_output_that_would_overwrite_an_input_is_refused(tiny_manifest_path, face_image, tmp_path, capsys):
    manifest = tmp_path / "face_explain.json"
    manifest.write_bytes(tiny_manifest_path.read_bytes())
    for name in json.loads(manifest.read_text())["models"]:
        (tmp_path / name["file"]).symlink_to(tiny_manifest_path.parent / name["file"])
    err = explain_error(capsys, str(face_image), "--crop", "--manifest", str(manifest), "--out", str(tmp_path))
    assert err == (f"error: --out {tmp_path}: writing {manifest} would overwrite the input {manifest}; pass --out a "
                   "new file name\n")
    assert manifest.read_bytes() == tiny_manifest_path.read_bytes()


@pytest.mark.parametrize("change,message", [
    (lambda data: "[]", "the top level is a JSON list"),
    (lambda data: {**data, "models": [dict(data["models"][0], input_size=100000)]}, "at most 1024 pixels"),
    (lambda data: {**data, "models": [dict(data["models"][0], std=[0.2, 1e-320, 0.2])]}, "at least 0.001"),
    (lambda data: {**data, "models": [dict(data["models"][0], classes=5)]}, "'classes' is 5"),
])
def test_bad_manifests_are_exit_2_naming_them(tiny_manifest_path, face_image, tmp_path, capsys, change, message):
    data = json.loads(tiny_manifest_path.read_text())
    manifest = tmp_path / "weights_manifest.json"
    changed = change(data)
    manifest.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    for name in data["models"]:
        (tmp_path / name["file"]).symlink_to(tiny_manifest_path.parent / name["file"])
    err = explain_error(capsys, str(face_image), "--crop", "--manifest", str(manifest), "--out", str(tmp_path / "o"))
    assert str(manifest) in err and message in err and not (tmp_path / "o").exists()
