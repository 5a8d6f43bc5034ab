"""training.recipe end to end on generated clips, and the calibrator applied by the kernel exactly as numpy would."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from bench.heldout_manifest import main as heldout_main
from bench.heldout_manifest import score_rows
from bench.quality import method_rows, seed_results
from bench.shortcut_baseline import main as shortcut_main
from bench.shortcut_baseline import probe_oof
from dfdc_core.aggregate import logit, sigmoid
from dfdc_core.manifest import Manifest
from dfdc_core.metrics import auc, log_loss, prior_weights
from dfdc_core.video import decode_video
from ensemble.stacking import calibration_items
from kernel import predict
from kernel.config import load_config
from kernel.scorer import load_scorer
from tests.helpers import lfw_face, write_video
from training.data.extract_faces import run_extraction
from training.data.sources import collect_items
from training.pipelines.recipe import (
    calibrated_items,
    make_folds,
    read_recipe,
    reported_items,
)
from training.recipe import main as recipe_main

TINY_RECIPE = {"frames": 4, "folds": 2, "target_prior": 0.5, "aggregation": "mean", "features": ["logit"],
               "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "samples_per_epoch": 8, "sampler": "pairs",
                         "sbi": {"p": 0.5}, "ema": 0.9, "lr": 0.001},
               "models": [{"name": "tiny", "arch": "test_efficientnet", "input_size": 64}]}


def one_face_clip(face: int, fake: bool, n: int = 6) -> np.ndarray:
    """A 256x192 clip of one LFW face drifting right; a fake's face is blurred and colour-shifted."""
    image = lfw_face(face, 150)
    if fake:
        image = np.clip(cv2.GaussianBlur(image, (0, 0), 2.5).astype(np.float32) * (1.15, 0.9, 0.85), 0, 255)
    canvas = np.full((192, 256, 3), 80, np.uint8)
    canvas[21:171, 40:190] = image.astype(np.uint8)
    return np.stack([np.roll(canvas, 3 * t, axis=1) for t in range(n)])


@pytest.fixture(scope="module")
def face_videos(tmp_path_factory) -> Path:
    """Four real clips (four people) and a fake of each, DFDC layout with `original` links."""
    folder = tmp_path_factory.mktemp("recipe_data")
    metadata = {}
    for person, face in enumerate((0, 10, 30, 40)):
        write_video(folder / f"real{person}.mp4", one_face_clip(face, False), fps=10)
        write_video(folder / f"fake{person}.mp4", one_face_clip(face, True), fps=10)
        metadata[f"real{person}.mp4"] = {"label": "REAL", "original": None}
        metadata[f"fake{person}.mp4"] = {"label": "FAKE", "original": f"real{person}.mp4"}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def recipe_run(face_videos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recipe_out")
    recipe = out.parent / "tiny_recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    assert recipe_main(["--data", str(face_videos), "--out", str(out), "--recipe", str(recipe), "--device", "cpu"]) == 0
    return out


@pytest.mark.slow
def test_recipe_writes_a_calibrated_manifest_the_kernel_scores(recipe_run, face_videos, tmp_path):
    manifest = json.loads((recipe_run / "weights_manifest.json").read_text())
    assert sorted(m["name"] for m in manifest["models"]) == ["tiny_fold0", "tiny_fold1"]
    assert {m["group"] for m in manifest["models"]} == {"tiny"} and manifest["stacker"] == "stacker.json"
    stacker = json.loads((recipe_run / "stacker.json").read_text())
    assert stacker["feature_names"] == ["tiny.logit"] and stacker["target_prior"] == 0.5
    report = json.loads((recipe_run / "report.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["model tiny", "mean of models", "stacker (nested CV)", "constant prior"]
    assert report["videos"] == 8 and (recipe_run / "report.png").read_bytes()[:4] == b"\x89PNG"
    videos = pd.read_csv(recipe_run / "oof_videos.csv")
    assert len(videos) == 8 and videos["calibrated"].between(0, 1).all()
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"filename": ["real0.mp4", "fake3.mp4"], "label": 0.5}).to_csv(sample, index=False)
    run = predict(face_videos, sample, recipe_run / "weights_manifest.json", tmp_path / "submission.csv",
                  config=load_config(frames=4), progress=False)
    assert run.reasons == {"real0.mp4": "ok", "fake3.mp4": "ok"}


def test_recipe_resumes_without_training_again(recipe_run, face_videos, caplog):
    weights = sorted((recipe_run / "runs").glob("*/weights_fp16.pth"))
    before = [p.stat().st_mtime_ns for p in weights]
    first = json.loads((recipe_run / "report.json").read_text())
    caplog.set_level("INFO")
    recipe = recipe_run.parent / "tiny_recipe.yaml"
    assert recipe_main(["--data", str(face_videos), "--out", str(recipe_run), "--recipe", str(recipe),
                        "--device", "cpu"]) == 0
    assert [p.stat().st_mtime_ns for p in weights] == before
    second = json.loads((recipe_run / "report.json").read_text())
    assert first["minutes"] == first["minutes_this_run"] > 0  # the wall time of a resumed run adds to the first's
    assert second["minutes"] == pytest.approx(first["minutes"] + second["minutes_this_run"], abs=0.011)
    assert "training tiny" not in caplog.text and "8 already done, 0 to extract" in caplog.text


@pytest.mark.slow
def test_kernel_applies_the_calibrator_as_numpy_does(recipe_run, face_videos, tmp_path):
    """Every video's label in the submission equals sigmoid(coef * capped logit(mean face score of the most fake
    person, fold models averaged per face) + intercept), computed here with numpy from the models' face scores."""
    stacker = json.loads((recipe_run / "stacker.json").read_text())
    stacker["coef"], stacker["intercept"] = [0.8], -0.4  # a calibrator that changes every score
    (recipe_run / "stacker.json").write_text(json.dumps(stacker))
    config = load_config(frames=4)
    names = sorted(p.name for p in face_videos.glob("*.mp4"))
    run = predict(face_videos, None, recipe_run / "weights_manifest.json", tmp_path / "submission.csv", config=config,
                  progress=False)
    scorer = load_scorer(Manifest.load(recipe_run / "weights_manifest.json"), config)
    for name, label in zip(run.submission["filename"], run.submission["label"]):
        frames = decode_video(face_videos / name, config)[0]
        prediction = scorer.score(frames)
        face_scores = np.mean([prediction.face_probs[m.spec.name] for m in scorer.models], axis=0)
        persons = np.array([t.person for t in prediction.tracks for _ in t.detections])
        video = max(face_scores[persons == p].mean() for p in np.unique(persons))
        expected = float(sigmoid(0.8 * logit(video) - 0.4))
        assert label == pytest.approx(np.clip(expected, 0.01, 0.99), abs=1e-6)
    assert sorted(run.submission["filename"]) == names


def test_shipped_recipes_are_valid():
    for name in ("cpu", "gpu"):
        recipe = read_recipe(name)
        assert recipe["target_prior"] == 0.5 and recipe["frames"] == load_config()["frames"]
    with pytest.raises(FileNotFoundError, match="no such recipe"):
        read_recipe("tpu")


@pytest.mark.parametrize("key, value, message", [
    ("models", "abc", "models: 'abc' must be a list of mappings"),
    ("models", ["abc"], "must be a list of mappings"),
    ("models", [], "must be a list of mappings"),
    ("models", [{"name": "a"}, {"name": "a"}], "every model needs a unique name"),
    ("models", [{"arch": "resnet18"}], "every model needs a unique name"),
    ("train", "abc", "train: 'abc' must be a mapping"),
    ("frames", 0, "frames: 0 must be a whole number of at least 1"),
    ("frames", 2.5, "frames: 2.5 must be a whole number"),
    ("folds", 1, "folds: 1 must be a whole number of at least 2"),
    ("folds", True, "folds: True must be a whole number"),
    ("target_prior", 1.0, "target_prior: 1.0 must be a share of fakes strictly between 0 and 1"),
    ("target_prior", "half", "target_prior: 'half' must be a share"),
    ("features", "logit", "features: 'logit' must be a list of statistic names"),
    ("aggregation", ["mean"], "aggregation: ['mean'] must be the name"),
])
def test_a_recipe_of_the_wrong_shape_is_refused_naming_the_file_and_key(tmp_path, key, value, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**read_recipe("cpu"), key: value}))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{re.escape(message)}"):
        read_recipe(str(path))


def test_shortcut_baseline_probes_the_untrained_backbone_beside_the_stacker(recipe_run, tmp_path, capsys):
    out = tmp_path / "shortcut"
    args = ["--runs", str(recipe_run), "--out", str(out), "--subset", r"(real|fake)[01]\.mp4"]
    assert shortcut_main(args) == 0
    table = pd.read_csv(out / "shortcut.csv")
    assert set(zip(table["videos"], table["name"], table["n"])) == {
        (part, name, n) for part, n in (("all", 8), ("subset", 4))
        for name in ("frozen probe", "stacker (nested CV)", "constant prior")}
    videos = pd.read_csv(recipe_run / "oof_videos.csv")
    stacker = table[(table["videos"] == "all") & (table["name"] == "stacker (nested CV)")].iloc[0]
    assert stacker["log_loss"] == pytest.approx(log_loss(videos["label"], videos["calibrated"]), abs=1e-4)
    assert (out / "shortcut.png").stat().st_size > 0 and "frozen probe" in capsys.readouterr().out
    cached = sorted(out.glob("features_test_efficientnet_64_*.npz"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert shortcut_main(args) == 0 and cached[0].stat().st_mtime_ns == stamp  # features computed once


def test_quality_rows_of_a_run_cover_all_videos_the_subset_and_each_method(recipe_run):
    videos = pd.read_csv(recipe_run / "oof_videos.csv")
    rows = pd.DataFrame(seed_results(recipe_run, 3, r"(real|fake)[01]\.mp4"))
    source = rows[rows["videos"].str.startswith("source ")]
    assert set(rows["seed"]) == {3} and rows.groupby("videos")["n"].max().to_dict() == {
        "all": 8, "subset": 4, "by method": 4, source["videos"].iloc[0]: 8}
    source = source.set_index("name")
    assert source.loc["stacker", "log_loss"] == pytest.approx(
        rows.set_index(["videos", "name"]).loc[("all", "stacker (nested CV)"), "log_loss"])
    by_method = rows[rows["videos"] == "by method"].set_index("name")
    assert list(by_method.index) == ["real", "fake"]  # no FF++ names here: methods from the labels
    fakes = videos[videos["label"] == 1]
    assert by_method.loc["fake", "log_loss"] == pytest.approx(log_loss(fakes["label"], fakes["calibrated"]))
    assert by_method.loc["fake", "auc"] == pytest.approx(auc(videos["label"], videos["calibrated"]))
    assert np.isnan(by_method.loc["real", "auc"])


def test_method_rows_score_each_manipulation_against_the_reals():
    videos = pd.DataFrame({"video": ["ffc40_yt_001.mp4", "ffc40_yt_002.mp4", "ffc40_df_001_002.mp4",
                                     "ffc40_df_002_001.mp4", "ffc40_nt_001_002.mp4", "dfdc_a.mp4"],
                           "label": [0, 0, 1, 1, 1, 1], "calibrated": [0.2, 0.4, 0.9, 0.6, 0.3, 0.5]})
    rows = {row["name"]: row for row in method_rows(videos)}
    assert {name: row["n"] for name, row in rows.items()} == {"real": 2, "Deepfakes": 2, "NeuralTextures": 1,
                                                              "fake": 1}
    assert rows["Deepfakes"]["auc"] == 1.0 and rows["NeuralTextures"]["auc"] == 0.5
    assert rows["real"]["log_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert rows["Deepfakes"]["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.6)) / 2)


def test_shortcut_probe_never_sees_the_fold_it_scores():
    """Fold 0's videos have the feature = label, fold 1's the opposite: a probe fitted on the other fold must get
    every video wrong (AUC 0); one that saw its own fold would not."""
    labels = np.array([0, 1] * 6)
    folds = pd.DataFrame({"video": [f"v{i}" for i in range(12)], "label": labels, "fold": np.repeat([0, 1], 6)})
    sign = np.where(folds["fold"] == 0, 1.0, -1.0)
    features = pd.DataFrame({"x": sign * (labels - 0.5)}, index=folds["video"])
    probs = probe_oof(features, folds, c=1.0, target_prior=0.5)
    assert auc(labels, probs) == 0.0


@pytest.mark.slow
def test_heldout_manifest_scores_each_outer_fold_with_a_manifest_that_never_saw_it(face_videos, tmp_path, caplog,
                                                                                   capsys):
    """Outer folds run one process each, then combined: every video is held out once, by a recipe whose folds,
    training data and crops lack it, and the pooled figures are those of the kernel's held-out scores."""
    recipe = tmp_path / "tiny_recipe.yaml"
    recipe.write_text(yaml.safe_dump(TINY_RECIPE))
    out = tmp_path / "heldout"
    args = ["--data", str(face_videos), "--out", str(out), "--recipe", str(recipe), "--outer", "2",
            "--subset", r"(real|fake)[01]\.mp4"]
    for fold in ("0", "1"):
        assert heldout_main([*args, "--outer-folds", fold]) == 0
    weights = sorted(out.glob("outer*/recipe/runs/*/weights_fp16.pth"))
    stamps = [path.stat().st_mtime_ns for path in weights]
    caplog.set_level("INFO")
    assert heldout_main(args) == 0
    assert len(weights) == 4 and [path.stat().st_mtime_ns for path in weights] == stamps  # combined, not retrained
    extracted = re.findall(r"(\d+) to extract", caplog.text)
    assert extracted and set(extracted) == {"0"}  # the shared crops serve every outer fold's recipe
    table = pd.read_csv(out / "heldout.csv")
    assert sorted(table["video"]) == sorted(p.name for p in face_videos.glob("*.mp4"))
    assert table["heldout"].between(0.01, 0.99).all()
    for fold, held in table.groupby("outer_fold"):
        trained = set(pd.read_csv(out / f"outer{fold}" / "recipe" / "folds.csv")["video"])
        metadata = json.loads((out / f"outer{fold}" / "data" / face_videos.name / "metadata.json").read_text())
        assert trained == set(metadata) == set(table["video"]) - set(held["video"])
    rows = pd.DataFrame(json.loads((out / "heldout.json").read_text())["rows"])
    pooled = rows[(rows["videos"] == "all") & (rows["outer_fold"] == "pooled")].iloc[0]
    weights_05 = prior_weights(table["label"], 0.5)
    assert pooled["n"] == 8 and pooled["log_loss"] == pytest.approx(
        log_loss(table["label"], table["heldout"], weights=weights_05))
    assert rows[(rows["videos"] == "subset") & (rows["outer_fold"] == "pooled")].iloc[0]["n"] == 4
    with pytest.raises(SystemExit):  # the outer folds on disk were made for --outer 2
        heldout_main([*args[:-4], "--outer", "3", *args[-2:]])
    assert "holds 2 outer folds, not --outer 3" in capsys.readouterr().err
    for fold in ("0", "1"):  # the promise on all videos is the fold's recipe report's stacker row
        report = json.loads((out / f"outer{fold}" / "recipe" / "report.json").read_text())
        stacker = next(row["log_loss"] for row in report["rows"] if row["name"] == "stacker (nested CV)")
        row = rows[(rows["videos"] == "all") & (rows["outer_fold"] == fold)].iloc[0]
        assert row["promised"] == pytest.approx(stacker, abs=1e-4)


def test_heldout_figures_of_no_videos_are_nan_not_an_error():
    empty = pd.DataFrame({"video": [], "label": [], "heldout": []})
    figures = score_rows(empty, 0.5)
    assert figures["n"] == 0 and np.isnan([figures["log_loss"], figures["auc"], figures["constant"]]).all()
    one = score_rows(pd.DataFrame({"video": ["a", "b"], "label": [1, 0], "heldout": [0.9, 0.2]}), 0.5)
    assert one["n"] == 2 and one["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.8)) / 2)
    assert one["auc"] == 1.0 and one["constant"] == pytest.approx(np.log(2))


@pytest.mark.slow
def test_recipe_folds_hold_only_its_data_videos_when_the_crop_folder_holds_more(face_videos, tmp_path):
    """A crop folder shared with a larger data set: the recipe's folds (hence its training) take only --data's
    videos, and nothing is extracted again."""
    crops = tmp_path / "crops"
    run_extraction(face_videos, crops, TINY_RECIPE["frames"], progress=False)
    part = tmp_path / "subset" / face_videos.name
    part.mkdir(parents=True)
    kept = {name: entry for name, entry in json.loads((face_videos / "metadata.json").read_text()).items()
            if name[-5] in "012"}
    for name in kept:
        (part / name).symlink_to(face_videos / name)
    (part / "metadata.json").write_text(json.dumps(kept))
    folds = make_folds(crops, tmp_path / "out", 2, 0, {item.video for item in collect_items(part)[0]})
    assert sorted(folds["video"]) == sorted(kept) and len(pd.read_csv(crops / "index.csv")["video"].unique()) == 8


@pytest.fixture(scope="module")
def photo_source(tmp_path_factory) -> Path:
    """A real/-only folder of six photos of three people, with a metadata.csv naming each one's group."""
    folder = tmp_path_factory.mktemp("sources") / "photos"
    rows = []
    for number, face in enumerate((50, 51, 60, 61, 70, 71)):
        canvas = np.full((220, 200, 3), 90, np.uint8)
        canvas[35:185, 25:175] = lfw_face(face, 150)
        (folder / "real").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "real" / f"p{number}.jpg"), canvas)
        rows.append({"file": f"real/p{number}.jpg", "label": "REAL", "group": f"person{number // 2}"})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def two_source_run(face_videos, photo_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two_source_run")
    recipe = out / "tiny_recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "train": {**TINY_RECIPE["train"], "validate_every": 0}}))
    assert recipe_main(["--data", str(face_videos), "--data", str(photo_source), "--out", str(out / "run"),
                        "--recipe", str(recipe), "--device", "cpu"]) == 0
    return out / "run"


@pytest.mark.slow
def test_the_recipe_over_two_sources_fits_the_calibrator_on_the_videos_and_reports_each_source(two_source_run,
                                                                                             face_videos):
    report = json.loads((two_source_run / "report.json").read_text())
    assert report["calibrated_on"] == [face_videos.name] and report["calibrated_items"] == report["videos"] == 8
    sources = {(row["source"], row["method"]): row for row in report["sources"]}
    assert set(sources) == {(face_videos.name, ""), ("photos", "")}
    photos, videos = sources[("photos", "")], sources[(face_videos.name, "")]
    assert (photos["n"], photos["real"], photos["fake"]) == (6, 6, 0) and np.isnan(photos["auc"])
    assert (videos["n"], videos["real"], videos["fake"]) == (8, 4, 4)
    stacker_row = next(row for row in report["rows"] if row["name"] == "stacker (nested CV)")
    assert videos["log_loss"] == pytest.approx(stacker_row["log_loss"])
    items = pd.read_csv(two_source_run / "oof_videos.csv", keep_default_na=False)
    stills = items[items["source"] == "photos"]
    assert sorted(stills["video"]) == [f"photos/real/p{n}.jpg" for n in range(6)]
    stacker = json.loads((two_source_run / "stacker.json").read_text())
    assert stacker["videos"] == 8  # fitted on the videos only, then applied to the stills:
    expected = sigmoid(stacker["coef"][0] * logit(stills["score_tiny"].to_numpy()) + stacker["intercept"])
    assert np.allclose(stills["calibrated"], expected, atol=1e-5)
    assert photos["reals_called_fake"] == pytest.approx(float((stills["calibrated"] > 0.5).mean()))
    assert photos["log_loss"] == pytest.approx(log_loss(np.zeros(6), stills["calibrated"]))
    folds = pd.read_csv(two_source_run / "folds.csv", keep_default_na=False)
    photo_folds = folds[folds["source"] == "photos"].assign(person=lambda t: t["video"].str[-5].astype(int) // 2)
    assert (photo_folds.groupby("person")["fold"].nunique() == 1).all()


@pytest.mark.slow
def test_aggregation_choice_tta_scores_a_run_both_ways_whichever_way_it_was_trained(two_source_run, tmp_path):
    """`--tta` re-predicts the way a run's OOF was not scored; a run trained with flip TTA is labelled so."""
    from bench.aggregation_choice import main as aggregation_main

    plain_run = tmp_path / "plain" / "run"
    shutil.copytree(two_source_run, plain_run)
    assert aggregation_main(["--runs", str(plain_run), "--tta"]) == 0
    keys = ["score", "fit_on", "aggregation", "tta_hflip"]
    plain = pd.read_csv(plain_run.parent / "aggregation_choice.csv").sort_values(keys, ignore_index=True)
    assert set(plain["tta_hflip"]) == {False, True}
    flipped_run = tmp_path / "flipped" / "run"
    shutil.copytree(plain_run, flipped_run)
    for folder in sorted(path.parent for path in (flipped_run / "runs").glob("*/oof.csv")):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        (folder / "config.yaml").write_text(yaml.safe_dump({**config, "tta_hflip": True}))
        (folder / "oof_hflip.csv").replace(folder / "oof.csv")  # as a run trained with tta_hflip writes it
    assert aggregation_main(["--runs", str(flipped_run)]) == 0
    alone = pd.read_csv(flipped_run.parent / "aggregation_choice.csv").sort_values(keys, ignore_index=True)
    assert set(alone["tta_hflip"]) == {True}
    assert np.allclose(alone["log_loss"], plain[plain["tta_hflip"]]["log_loss"])
    assert aggregation_main(["--runs", str(flipped_run), "--tta"]) == 0
    both = pd.read_csv(flipped_run.parent / "aggregation_choice.csv").sort_values(keys, ignore_index=True)
    assert np.allclose(both["log_loss"], plain["log_loss"], atol=1e-4)
    for folder in sorted(path.parent for path in (flipped_run / "runs").glob("*/oof.csv")):
        assert not (folder / "oof_hflip.csv").exists()
        original = pd.read_csv(plain_run / "runs" / folder.name / "oof.csv")
        assert np.allclose(pd.read_csv(folder / "oof_plain.csv")["prob"], original["prob"], atol=1e-5)


@pytest.mark.slow
def test_aggregation_choice_refits_the_calibrator_as_the_recipe_does_and_reports_the_videos(two_source_run, capsys):
    from bench.aggregation_choice import main as aggregation_main

    assert aggregation_main(["--runs", str(two_source_run), "--fit-on", "recipe", "videos"]) == 0
    table = pd.read_csv(two_source_run.parent / "aggregation_choice.csv")
    assert set(table["fit_on"]) == {"recipe", "videos"} and set(table["tta_hflip"]) == {False}
    report = {row["name"]: row for row in json.loads((two_source_run / "report.json").read_text())["rows"]}
    mean = table[table["aggregation"] == "mean"].set_index(["score", "fit_on"])["log_loss"]
    for score in ("stacker (nested CV)", "mean of models"):  # the videos' figures; the photos are real-only: one fit set
        expected = report[score]["log_loss"]
        assert [mean[(score, "recipe")], mean[(score, "videos")]] == pytest.approx([expected, expected], abs=1e-4)
    assert "mean over runs" in capsys.readouterr().out


@pytest.mark.slow
def test_framing_cue_scores_each_sources_crops_three_ways(two_source_run, face_videos, capsys):
    from bench.framing_cue import main as framing_main
    from bench.framing_cue import reframed

    crop = np.full((130, 130, 3), 200, np.uint8)
    crop[:20] = 7
    black, edges = reframed(crop, 0.3, "black margin"), reframed(crop, 0.3, "edge margin")
    assert black.shape == edges.shape == crop.shape and black[0, 0].tolist() == [0, 0, 0]
    assert (black[25:105, 25:105] == 200).all() and (edges == 200).all()  # the face box's own edges fill it
    assert np.array_equal(reframed(crop, 0.3, "as cut"), crop)
    assert framing_main(["--run", str(two_source_run), "--sources", "photos", face_videos.name]) == 0
    table = pd.read_csv(two_source_run / "framing_cue.csv")
    assert set(zip(table["source"], table["way"])) == {(source, way) for source in ("photos", face_videos.name)
                                                      for way in ("as cut", "black margin", "edge margin")}
    as_cut = table[table["way"] == "as cut"]
    assert (as_cut["logit_shift_reals"] == 0).all() and (table["items"] == table["source"].map(
        {"photos": 6, face_videos.name: 8})).all()
    assert (two_source_run / "framing_cue.png").read_bytes()[:4] == b"\x89PNG"


def test_people_scaling_draws_nested_persons_of_a_source(tmp_path):
    from bench.people_scaling import people_subset

    source = tmp_path / "ffpp"
    rows = []
    for person in range(10):
        for label in (0, 1):
            (source / ("real" if label == 0 else "fake")).mkdir(parents=True, exist_ok=True)
            file = f"{'real' if label == 0 else 'fake'}/{person}.jpg"
            cv2.imwrite(str(source / file), np.zeros((8, 8, 3), np.uint8))
            rows.append({"file": file, "label": "FAKE" if label else "REAL", "ffpp_id_estimate": 100 + 10 * person})
    pd.DataFrame(rows).to_csv(source / "metadata.csv", index=False)
    small, three = people_subset(source, 3, 0, tmp_path / "three")
    large, seven = people_subset(source, 7, 0, tmp_path / "seven")
    assert (small.name, three, seven) == ("ffpp", 3, 7)  # named as the source, so its extraction records apply
    few = set(pd.read_csv(small / "metadata.csv")["ffpp_id_estimate"])
    many = set(pd.read_csv(large / "metadata.csv")["ffpp_id_estimate"])
    assert len(few) == 3 and few < many and len(many) == 7
    table = pd.read_csv(small / "metadata.csv", keep_default_na=False)
    assert len(table) == 6 and set(table["label"]) == {"REAL", "FAKE"}
    assert all((small / file).resolve() == (source / file).resolve() for file in table["file"])


def test_the_calibrator_fits_every_source_with_both_classes_and_reports_the_videos(tmp_path):
    """64 videos are too few for a stable calibrator: it is fitted on the videos and on every still source holding
    reals and fakes (not on a real-only one), while the report's rows describe the videos alone."""
    generator = np.random.default_rng(0)
    sources = {"clips": ("mp4", 12), "crops": ("jpg", 200), "photos": ("jpg", 30)}
    folds, oof = [], []
    for source, (extension, count) in sources.items():
        for number in range(count):
            video = f"{source}/{number}.{extension}"
            label = 0 if source == "photos" else number % 2
            folds.append({"video": video, "label": label, "original": "", "source": source,
                          "group": len(folds), "fold": number % 2})
            prob = float(np.clip(0.5 + (0.3 if label else -0.3) + generator.normal(0, 0.25), 0.01, 0.99))
            oof.append({"video": video, "frame": 0, "person": 0, "model": "m_fold0", "group": "m", "prob": prob,
                        "label": label})
    folds = pd.DataFrame(folds)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    pd.DataFrame(oof).to_csv(tmp_path / "oof.csv", index=False)
    fitted_on, reported_on = calibration_items(tmp_path / "folds.csv"), reported_items(folds)
    assert fitted_on == set(folds.loc[folds["source"] != "photos", "video"])
    assert reported_on == set(folds.loc[folds["source"] == "clips", "video"])
    recipe = {"features": ["logit"], "aggregation": "mean", "target_prior": 0.5}
    stacker, rows, table, items = calibrated_items([tmp_path / "oof.csv"], tmp_path / "folds.csv", recipe,
                                                   fitted_on, reported_on)
    assert stacker["videos"] == 212 and sorted(table.videos) == sorted(reported_on)
    clips = items[items["video"].isin(reported_on)]
    stacker_row = next(row for row in rows if row["name"] == "stacker (nested CV)")
    weights = prior_weights(clips["label"].to_numpy(), 0.5)
    assert stacker_row["log_loss"] == pytest.approx(log_loss(clips["label"], clips["calibrated"], weights=weights))
    photos = items[items["video"].str.startswith("photos/")]
    expected = sigmoid(stacker["coef"][0] * logit(photos["score_m"].to_numpy()) + stacker["intercept"])
    assert len(photos) == 30 and np.allclose(photos["calibrated"], expected, atol=1e-6)
    folds[folds["source"] == "clips"].to_csv(tmp_path / "clips.csv", index=False)
    assert calibration_items(tmp_path / "clips.csv") is None  # one source: every item, as before
