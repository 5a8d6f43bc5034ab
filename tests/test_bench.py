"""bench.kernel_speed on two generated clips: every stage timed, faces found, the baseline beside ours, JSON out."""
from __future__ import annotations

import json
import math

from bench.kernel_speed import main as kernel_speed_main
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
