"""bench.kernel_speed on two generated clips: every stage timed, faces found, the baseline beside ours, JSON out;
bench.train_step on a tiny model: both layouts timed, the ratio written; bench.oof_ensemble on crafted run folders."""
from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import pytest

from bench.kernel_speed import main as kernel_speed_main
from bench.oof_ensemble import main as oof_ensemble_main
from bench.oof_ensemble import write_ensemble
from bench.train_step import main as train_step_main
from bench.train_step import parse_arch
from tests.helpers import faces_clip, write_video


def test_kernel_speed_times_every_stage_and_the_baseline(tmp_path, capsys):
    videos = tmp_path / "videos"
    for number in range(2):
        write_video(videos / f"clip_{number}.mp4", faces_clip(40, swap_right=bool(number), seed=number))
    out = tmp_path / "speed.json"
    assert kernel_speed_main(["--videos", str(videos), "--frames", "4", "--threads", "1",
                              "--archs", "test_efficientnet@64", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["videos"] == ["clip_0.mp4", "clip_1.mp4"] and result["frames"] == 4
    seconds = result["seconds_per_video"]
    assert {"decode_pyav", "decode_decord", "decode_opencv", "ours_detect", "ours_loop", "classify", "base_decode",
            "base_detect"} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    assert result["ratios"]["decode_detect"] == seconds["base_decode_detect"] / seconds["ours_loop"]
    assert [video["ours_faces"] for video in result["per_video"]] == [4, 4]  # a face in every sampled frame
    assert [video["base_faces"] for video in result["per_video"]] == [4, 4] and not any(
        video["error"] for video in result["per_video"])
    assert result["faces_found_share"]["ours_filtered"] == 1.0 and math.isnan(
        result["faces_found_share"]["ours_filtered_labelled"])  # no metadata.json: no labelled videos
    printed = capsys.readouterr().out
    assert "DECODE+DETECT (ours: prefetch loop wall/n)" in printed and f"figures written to {out}" in printed


def test_train_step_times_both_layouts_and_writes_the_ratio(tmp_path, capsys):
    out = tmp_path / "train_step.json"
    assert train_step_main(["--archs", "test_efficientnet@32", "--batch-size", "2", "--steps", "1", "--blocks", "1",
                            "--threads", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    (row,) = figures["rows"]
    assert (row["arch"], row["input_size"], figures["batch_size"]) == ("test_efficientnet", 32, 2)
    assert row["contiguous"] > 0 and row["channels_last"] > 0
    assert math.isclose(row["ratio"], row["contiguous"] / row["channels_last"])
    assert "test_efficientnet@32" in capsys.readouterr().out


def test_train_step_refuses_an_arch_without_its_size():
    assert parse_arch("resnet18@224") == ("resnet18", 224)
    with pytest.raises(argparse.ArgumentTypeError, match="timm_name@input_size"):
        parse_arch("resnet18")


def write_run(folder, fold_of: dict[str, int], probs: dict[str, float]) -> None:
    """A finished recipe run's OOF files: one group `lite0`, two fold models, one crop (frame 0) per video."""
    folder.mkdir(parents=True)
    pd.DataFrame({"video": list(fold_of), "fold": list(fold_of.values())}).to_csv(folder / "folds.csv", index=False)
    (folder / "recipe.yaml").write_text("folds: 2\n")
    for fold in (0, 1):
        videos = [video for video, f in fold_of.items() if f == fold]
        run = folder / "runs" / f"lite0_fold{fold}"
        run.mkdir(parents=True)
        pd.DataFrame({"video": videos, "frame": 0, "person": 0, "model": f"lite0_fold{fold}", "group": "lite0",
                      "prob": [probs[v] for v in videos], "label": [int(v.startswith("fake")) for v in videos]}
                     ).to_csv(run / "oof.csv", index=False)


def test_oof_ensemble_averages_each_crops_logit_over_runs_with_other_folds(tmp_path, capsys):
    videos = ["fake_a.mp4", "fake_b.mp4", "real_c.mp4", "real_d.mp4"]
    first_probs = dict(zip(videos, [0.9, 0.2, 0.5, 0.1]))
    second_probs = dict(zip(videos, [0.5, 0.8, 0.5, 0.3]))
    write_run(tmp_path / "a", dict(zip(videos, [0, 0, 1, 1])), first_probs)
    write_run(tmp_path / "b", dict(zip(videos, [1, 0, 0, 1])), second_probs)  # another seed's folds
    out = tmp_path / "ensemble" / "seed0"
    assert oof_ensemble_main(["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "recipe_quality --out" in capsys.readouterr().out
    averaged = pd.concat([pd.read_csv(out / "runs" / f"lite0_fold{fold}" / "oof.csv") for fold in (0, 1)])
    assert list(averaged["video"]) == videos  # the first run's files and folds
    expected = [1 / (1 + math.exp(-(math.log(p / (1 - p)) + math.log(q / (1 - q))) / 2))
                for p, q in zip(first_probs.values(), second_probs.values())]
    assert averaged["prob"].tolist() == pytest.approx(expected, abs=1e-6)
    assert expected[1] == pytest.approx(0.5) and expected[0] == pytest.approx(0.75)  # logits 2.2 and 0
    assert (out / "folds.csv").read_text() == (tmp_path / "a" / "folds.csv").read_text()
    assert not list(out.rglob("*.pth"))


def test_oof_ensemble_refuses_runs_of_other_crops_or_labels_and_an_existing_out(tmp_path):
    videos = ["fake_a.mp4", "real_c.mp4"]
    write_run(tmp_path / "a", dict(zip(videos, [0, 1])), dict(zip(videos, [0.9, 0.1])))
    write_run(tmp_path / "fewer", {"fake_a.mp4": 0}, {"fake_a.mp4": 0.9})
    more = [*videos, "real_e.mp4"]
    write_run(tmp_path / "more", dict(zip(more, [0, 1, 1])), dict.fromkeys(more, 0.5))
    relabelled = tmp_path / "relabelled"
    write_run(relabelled, dict(zip(videos, [0, 1])), dict(zip(videos, [0.9, 0.1])))
    oof = pd.read_csv(relabelled / "runs" / "lite0_fold1" / "oof.csv").assign(label=1)
    oof.to_csv(relabelled / "runs" / "lite0_fold1" / "oof.csv", index=False)
    for other, message in (("fewer", "did not score the crops"), ("more", "did not score the crops"),
                           ("relabelled", "labels differ")):
        with pytest.raises(ValueError, match=message):
            write_ensemble([tmp_path / "a", tmp_path / other], tmp_path / f"out_{other}")
        assert not (tmp_path / f"out_{other}").exists()
    with pytest.raises(ValueError, match="no runs/\\*/oof.csv"):
        write_ensemble([tmp_path / "a", tmp_path / "missing"], tmp_path / "out_missing")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        write_ensemble([tmp_path / "a", tmp_path / "a"], tmp_path / "taken")
    with pytest.raises(SystemExit):
        oof_ensemble_main(["--runs", str(tmp_path / "a"), "--out", str(tmp_path / "alone")])
