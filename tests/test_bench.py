"""bench.kernel_speed on two generated clips: every stage timed, faces found, the baseline beside ours, JSON out;
bench.train_step on a tiny model: both layouts timed, the ratio written."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from bench.kernel_speed import main as kernel_speed_main
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
