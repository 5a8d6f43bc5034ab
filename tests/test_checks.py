"""The kernel's settings checks (`kernel/checks.py`) on crafted inputs: the config, the device and the paths, each
bad value refused with the message naming it and the fix, each good value accepted.

Fast unit tests: `make mutation` runs them against mutants of these modules (see docs/testing.md).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import kernel.checks as checks
from dfdc_core.aggregate import STRATEGIES
from dfdc_core.config import SettingsError
from dfdc_core.values import is_one_of
from kernel.config import load_config

FIX = "; fix it in the --config JSON or its command-line flag"


def refused(config: dict, key: str, value, wanted: str) -> None:
    """`check_config` refuses `key` = `value` with the whole message naming the key, the value and what it must be."""
    with pytest.raises(SettingsError) as error:
        checks.check_config(dict(config, **{key: value}))
    assert str(error.value) == f"kernel setting '{key}' is {value!r}: it must be {wanted}{FIX}"


def test_the_default_config_and_the_edge_values_pass():
    config = load_config()
    checks.check_config(config)
    edges = dict(config, prior=0, min_face_score=1, track_iou=0.0, min_track_share=1.0, min_track_size_ratio=0,
                 min_face_px=0, track_max_shift=0, crop_margin=0.0, time_budget_hours=0, detect_threads=1,
                 mtcnn_thresholds=[0, 1, 0.5], clip=[0, 1], tta_hflip=True, decode_backends=["opencv"],
                 **{key: 1 for key in checks.POSITIVE_INTEGERS})
    checks.check_config(edges)
    for name in STRATEGIES:
        checks.check_config(dict(config, aggregation=name))


@pytest.mark.parametrize("key", checks.POSITIVE_INTEGERS)
def test_counts_must_be_whole_numbers_above_zero(key):
    for value in (0, -1, 2.0, True, "8", None):
        refused(load_config(), key, value, "a whole number above 0")


@pytest.mark.parametrize("key", checks.SHARES)
def test_shares_must_be_from_zero_to_one(key):
    for value in (-0.01, 1.01, float("nan"), True, "0.5", None):
        refused(load_config(), key, value, "a number from 0 to 1")


@pytest.mark.parametrize("key", checks.NON_NEGATIVE)
def test_sizes_and_times_must_be_finite_and_not_negative(key):
    for value in (-0.5, float("inf"), float("nan"), False, "1"):
        refused(load_config(), key, value, "a finite number of 0 or more")


def test_the_other_settings_are_refused_with_what_they_must_be():
    config = load_config()
    for value in (0, -2, 1.5, True):
        refused(config, "detect_threads", value, "null (all cores but one) or a whole number above 0")
    for value in ([0.7, 0.8], [0.7, 0.8, 1.1], [-0.1, 0.8, 0.9], [0.7, 0.8, float("nan")], "0.7 0.8 0.9",
                  [0.7, 0.8, 0.9, 0.9], [0.7, True, 0.9]):
        refused(config, "mtcnn_thresholds", value, "3 numbers from 0 to 1, one per MTCNN stage")
    for value in ([0.5, 0.5], [0.99, 0.01], [-0.1, 0.5], [0.1, 1.1], [0.1], (0.01,), None, [0.01, None]):
        refused(config, "clip", value, "[low, high] with 0 <= low < high <= 1")
    for value in (1, "true", None):
        refused(config, "tta_hflip", value, "true or false")
    for value in ("median", "", None):
        refused(config, "aggregation", value, f"one of {sorted(STRATEGIES)}")
    for value in ([], ["pyav", "ffmpeg"], "pyav", None, ("pyav",)):
        refused(config, "decode_backends", value, "a non-empty list of ['decord', 'opencv', 'pyav']")


def test_the_first_bad_setting_is_named():
    config = dict(load_config(), frames=0, prior=2.0, clip=[1, 0])
    with pytest.raises(SettingsError, match="'frames'"):
        checks.check_config(config)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_a_device_name_is_auto_cpu_cuda_or_cuda_n(device):
    checks.check_device(device)  # whether the GPU is usable is the probe's question (tests/test_device.py)


@pytest.mark.parametrize("device", ["meta", "gpu please", "cuda:", "cuda:x", "CPU", " cpu", "cpu\n", None, 0])
def test_any_other_device_is_refused_with_the_choices(device):
    with pytest.raises(SettingsError) as error:
        checks.check_device(device)
    assert str(error.value) == (f"--device {device!r}: the kernel runs on auto (a GPU that passes a probe, else the "
                                "CPU), cpu, cuda or cuda:N")


def test_paths_the_videos_folder_and_a_writable_out_file(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "new" / "deeper" / "submission.csv"
    checks.check_paths(videos, None, out)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # the write probe leaves nothing
    sample = tmp_path / "sample.csv"
    with pytest.raises(SettingsError) as error:
        checks.check_paths(tmp_path / "absent", sample, out)
    assert str(error.value) == f"--videos {tmp_path / 'absent'}: no such folder; pass --videos DIR"
    sample.write_text("filename\na.mp4\n")
    with pytest.raises(SettingsError) as error:
        checks.check_paths(tmp_path / "absent", sample, out)
    assert str(error.value) == (f"--videos {tmp_path / 'absent'}: no such folder; {sample} lists videos that would "
                                "all get the prior; pass --videos DIR")


def test_paths_refuse_an_out_in_a_folder_where_no_file_can_be_made(tmp_path):
    out = Path("/proc/submission.csv")  # /proc takes no new file, even from root
    with pytest.raises(SettingsError, match=r"^--out /proc/submission.csv: cannot write in /proc \(.*\); pick a "
                                            r"writable folder$"):
        checks.check_paths(tmp_path, None, out)


def test_paths_refuse_an_out_that_is_a_folder_or_cannot_be_written(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    with pytest.raises(SettingsError) as error:
        checks.check_paths(videos, None, videos)
    assert str(error.value) == f"--out {videos}: {videos} is a folder; name a file, e.g. --out {videos / 'submission.csv'}"
    out = tmp_path / "s.csv"
    (tmp_path / "s.csv.partial.jsonl").mkdir()
    with pytest.raises(SettingsError, match=re.escape(f"--out {out}: {tmp_path / 's.csv.partial.jsonl'} is a folder")):
        checks.check_paths(videos, None, out)
    (tmp_path / "a_file").write_text("")
    under_a_file = tmp_path / "a_file" / "s.csv"
    with pytest.raises(SettingsError, match=re.escape(f"--out {under_a_file}: cannot write in {under_a_file.parent} (")
                       + r".*\); pick a writable folder$"):
        checks.check_paths(videos, None, under_a_file)


@pytest.mark.parametrize("key", checks.POSITIVE_INTEGERS)
def test_counts_have_an_upper_bound(key):
    most = checks.POSITIVE_INTEGERS[key]
    config = dict(load_config(), detect_long_side=4096, max_frame_side=8192)  # the cross-checks out of the way
    checks.check_config(dict(config, **{key: most}))
    for value in (most + 1, 2**63, 10**12):
        refused(config, key, value, f"at most {most}: more only exhausts memory")


def test_the_bounds_are_what_a_run_can_hold():
    assert checks.POSITIVE_INTEGERS == {"frames": 1000, "max_frame_side": 8192, "prefetch_videos": 8,
                                        "detect_long_side": 4096, "detect_batch_size": 256,
                                        "mtcnn_min_face_size": 4096, "classify_batch_size": 1024, "max_persons": 64}


def test_the_crop_margin_threads_and_face_sizes_have_upper_bounds():
    config = load_config()
    checks.check_config(dict(config, crop_margin=2.0, detect_threads=256, mtcnn_min_face_size=480,
                             min_face_px=2160))
    for value in (2.01, 1e6):
        refused(config, "crop_margin", value, "at most 2.0 (a crop 5 faces wide); more only pads the crop and "
                                              "exhausts memory")
    checks.check_config(dict(config, still_pad=2.0))
    for value in (2.01, 1e6):
        refused(config, "still_pad", value, "at most 2.0 (an image padded to 5 times its side); more only exhausts "
                                            "memory")
    for value in (-0.1, float("nan"), "0.4", None):
        refused(config, "still_pad", value, "a finite number of 0 or more")
    for value in (257, 2**63):
        refused(config, "detect_threads", value, "at most 256 threads")
    refused(config, "mtcnn_min_face_size", 481, "at most detect_long_side (480): no larger face fits the detector's "
                                                "copy of a frame")
    refused(config, "min_face_px", 2160.5, "at most max_frame_side (2160): no face is larger than the frame")
    refused(dict(config, max_frame_side=100), "min_face_px", 101, "at most max_frame_side (100): no face is larger "
                                                                  "than the frame")


def test_a_list_or_a_mapping_where_a_name_belongs_is_refused_not_a_crash():
    config = load_config()
    for value in (["mean"], {"mean": 1}):
        refused(config, "aggregation", value, f"one of {sorted(STRATEGIES)}")
    for value in ([["pyav"]], [{"pyav": 1}], ["pyav", ["decord"]]):
        refused(config, "decode_backends", value, "a non-empty list of ['decord', 'opencv', 'pyav']")
    assert is_one_of("mean", STRATEGIES) and not is_one_of(["mean"], STRATEGIES)


def test_every_file_written_beside_out_must_not_be_a_folder(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "s.csv"
    assert checks.output_files(out) == (out, tmp_path / "s.csv.partial.jsonl", tmp_path / "s.csv.inflight.json",
                                        tmp_path / "s.csv.summary.json")
    for written in checks.output_files(out)[1:]:
        written.mkdir()
        with pytest.raises(SettingsError) as error:
            checks.check_paths(videos, None, out)
        assert str(error.value) == (f"--out {out}: {written} is a folder; name a file, e.g. --out "
                                    f"{out / 'submission.csv'}")
        written.rmdir()
    checks.check_paths(videos, None, out)


def test_an_out_name_too_long_for_the_files_written_beside_it_is_refused(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    fits = tmp_path / ("s" * (longest - checks.NAME_ROOM - 4) + ".csv")
    checks.check_paths(videos, None, fits)
    for length in (longest - checks.NAME_ROOM + 1, 240, longest, longest + 45):
        out = tmp_path / ("s" * (length - 4) + ".csv")
        with pytest.raises(SettingsError) as error:
            checks.check_paths(videos, None, out)
        assert str(error.value) == (f"--out {out}: its name is {length} bytes, and files written beside it add up to "
                                    f"28 ({out.name}.partial.jsonl and its temporary copy), over the {longest} bytes a "
                                    f"name may have there; use a name of at most {longest - 28} bytes")
    wide = tmp_path / ("é" * 114 + ".csv")  # 232 bytes in 118 characters: bytes count
    with pytest.raises(SettingsError, match="its name is 232 bytes"):
        checks.check_paths(videos, None, wide)


def test_a_videos_name_too_long_is_no_such_folder(tmp_path):
    videos = tmp_path / ("v" * 300)
    with pytest.raises(SettingsError) as error:
        checks.check_paths(videos, None, tmp_path / "s.csv")
    assert str(error.value) == f"--videos {videos}: no such folder; pass --videos DIR"


def test_no_output_may_overwrite_an_input_however_it_is_named(tmp_path, monkeypatch):
    manifest = tmp_path / "weights_manifest.json"
    manifest.write_text("{}")
    absent = tmp_path / "videos" / "missing.mp4"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.csv").symlink_to(manifest)
    os.link(manifest, tmp_path / "hard.csv")
    for out in (manifest, Path("weights_manifest.json"), tmp_path / "sub" / ".." / "weights_manifest.json",
                tmp_path / "link.csv", tmp_path / "hard.csv"):
        with pytest.raises(SettingsError) as error:
            checks.check_not_an_input(out, [absent, manifest])
        assert str(error.value) == (f"--out {out}: writing {out} would overwrite the input {manifest}; pass --out a "
                                    "new file name")
    with pytest.raises(SettingsError, match=re.escape(f"writing {absent} would overwrite the input {absent};")):
        checks.check_not_an_input(absent, [absent])  # an input named but absent is still not written
    beside = tmp_path / "weights_manifest"  # its checkpoint would be weights_manifest.partial.jsonl
    sidecar = tmp_path / "weights_manifest.summary.json"
    sidecar.write_text("{}")
    with pytest.raises(SettingsError) as error:
        checks.check_not_an_input(beside, [sidecar])
    assert str(error.value) == (f"--out {beside}: writing {sidecar} would overwrite the input {sidecar}; pass --out a "
                                "new file name")
    checks.check_not_an_input(tmp_path / "submission.csv", [manifest, absent, sidecar])
    checks.check_not_an_input(tmp_path / "submission.csv", [])


def test_out_may_not_be_a_device_or_a_pipe(tmp_path):
    from tests.helpers import pipe_that_unblocks

    videos = tmp_path / "videos"
    videos.mkdir()
    with pytest.raises(SettingsError) as error:
        checks.check_paths(videos, None, Path("/dev/null"))
    assert str(error.value) == "--out /dev/null: /dev/null is no regular file (a device or a pipe); name a new file"
    assert Path("/dev/null").is_char_device()
    out = tmp_path / "s.csv"
    pipe_that_unblocks(tmp_path / "s.csv.partial.jsonl")
    with pytest.raises(SettingsError, match=re.escape(f"{out}.partial.jsonl is no regular file")):
        checks.check_paths(videos, None, out)
    (tmp_path / "s.csv.partial.jsonl").unlink()
    (tmp_path / "s.csv").symlink_to(tmp_path / "nowhere.csv")  # a broken link is replaced, like any file
    checks.check_paths(videos, None, out)


def test_a_commands_one_output_file_is_checked_as_the_kernels_are(tmp_path):
    """`check_out_file` (ensemble.stack's --out): no folder, a folder that takes files, never one of the inputs; only
    the file itself is written, so a name beside it that the kernel would write is no conflict."""
    out, oof = tmp_path / "stacker.json", tmp_path / "oof.csv"
    oof.write_text("x")
    checks.check_out_file(out, [oof], "stacker.json")
    checks.check_out_file(out, [out.with_name(out.name + ".summary.json")], "stacker.json")
    with pytest.raises(SettingsError) as error:
        checks.check_out_file(oof, [oof], "stacker.json")
    assert str(error.value) == (f"--out {oof}: writing {oof} would overwrite the input {oof}; pass --out a new file "
                                "name")
    (tmp_path / "folder").mkdir()
    with pytest.raises(SettingsError) as error:
        checks.check_out_file(tmp_path / "folder", [oof], "stacker.json")
    assert str(error.value) == (f"--out {tmp_path / 'folder'}: {tmp_path / 'folder'} is a folder; name a file, e.g. "
                                f"--out {tmp_path / 'folder' / 'stacker.json'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SettingsError, match=re.escape(f"--out {tmp_path / 'file' / 'stacker.json'}: cannot write in "
                                                      f"{tmp_path / 'file'} (")):
        checks.check_out_file(tmp_path / "file" / "stacker.json", [oof], "stacker.json")
