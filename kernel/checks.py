"""Settings checked before the first video: the config, the device and the paths.

A bad setting stops the kernel with a message naming it and the fix (`SettingsError`); the manifest and its stacker
are checked as `dfdc_core.manifest.Manifest.load` reads them (`ManifestError`). `python -m kernel` turns either into
exit 2. Nothing here reads a video.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable

from dfdc_core.aggregate import STRATEGIES
from dfdc_core.config import SettingsError, writable_folder
from dfdc_core.preprocessing import MAX_CROP_MARGIN, MAX_STILL_PAD
from dfdc_core.values import is_number, is_numbers, is_one_of, is_positive_int
from dfdc_core.video import BACKENDS
from kernel.kaggle import checkpoint_path, in_flight_path, summary_path

# Whole numbers above 0, each with the largest value that is not absurd: above it a run exhausts memory (frames of
# one video, one batch, the videos decoded ahead) or the machine's threads, whatever the videos.
POSITIVE_INTEGERS = {"frames": 1000, "max_frame_side": 8192, "prefetch_videos": 8, "detect_long_side": 4096,
                     "detect_batch_size": 256, "mtcnn_min_face_size": 4096, "classify_batch_size": 1024,
                     "max_persons": 64}
MAX_DETECT_THREADS = 256
SHARES = ("prior", "min_face_score", "track_iou", "min_track_share", "min_track_size_ratio")  # numbers in [0, 1]
NON_NEGATIVE = ("min_face_px", "track_max_shift", "crop_margin", "still_pad", "time_budget_hours")
# A setting that cannot exceed another: (key, the other, why)
NOT_ABOVE = (("mtcnn_min_face_size", "detect_long_side", "no larger face fits the detector's copy of a frame"),
             ("min_face_px", "max_frame_side", "no face is larger than the frame"))
NAME_ROOM = 28  # bytes added to --out's file name: '.partial.jsonl', then write_atomic's '.<name>.XXXXXXXX.tmp'


def setting_error(key: str, value: Any, wanted: str) -> SettingsError:
    return SettingsError(f"kernel setting '{key}' is {value!r}: it must be {wanted}; fix it in the --config JSON "
                         "or its command-line flag")


def check_config(config: dict[str, Any]) -> None:
    """Every kernel setting has a usable type and range (`SettingsError` naming the first that does not)."""
    for key, most in POSITIVE_INTEGERS.items():
        if not is_positive_int(config[key]):
            raise setting_error(key, config[key], "a whole number above 0")
        if config[key] > most:
            raise setting_error(key, config[key], f"at most {most}: more only exhausts memory")
    for key in SHARES:
        if not (is_number(config[key]) and 0 <= config[key] <= 1):
            raise setting_error(key, config[key], "a number from 0 to 1")
    for key in NON_NEGATIVE:
        if not (is_number(config[key]) and config[key] >= 0):
            raise setting_error(key, config[key], "a finite number of 0 or more")
    if config["crop_margin"] > MAX_CROP_MARGIN:
        raise setting_error("crop_margin", config["crop_margin"], f"at most {MAX_CROP_MARGIN} (a crop "
                            f"{2 * MAX_CROP_MARGIN + 1:g} faces wide); more only pads the crop and exhausts memory")
    if config["still_pad"] > MAX_STILL_PAD:
        raise setting_error("still_pad", config["still_pad"], f"at most {MAX_STILL_PAD} (an image padded to "
                            f"{2 * MAX_STILL_PAD + 1:g} times its side); more only exhausts memory")
    for key, other, why in NOT_ABOVE:
        if config[key] > config[other]:
            raise setting_error(key, config[key], f"at most {other} ({config[other]}): {why}")
    if config["detect_threads"] is not None and not is_positive_int(config["detect_threads"]):
        raise setting_error("detect_threads", config["detect_threads"],
                            "null (all cores but one) or a whole number above 0")
    if (config["detect_threads"] or 0) > MAX_DETECT_THREADS:
        raise setting_error("detect_threads", config["detect_threads"], f"at most {MAX_DETECT_THREADS} threads")
    thresholds = config["mtcnn_thresholds"]
    if not (is_numbers(thresholds, 3) and all(0 <= t <= 1 for t in thresholds)):
        raise setting_error("mtcnn_thresholds", thresholds, "3 numbers from 0 to 1, one per MTCNN stage")
    clip = config["clip"]
    if not (is_numbers(clip, 2) and 0 <= clip[0] < clip[1] <= 1):
        raise setting_error("clip", clip, "[low, high] with 0 <= low < high <= 1")
    if not isinstance(config["tta_hflip"], bool):
        raise setting_error("tta_hflip", config["tta_hflip"], "true or false")
    if not is_one_of(config["aggregation"], STRATEGIES):
        raise setting_error("aggregation", config["aggregation"], f"one of {sorted(STRATEGIES)}")
    backends = config["decode_backends"]
    if not (isinstance(backends, list) and backends and all(is_one_of(name, BACKENDS) for name in backends)):
        raise setting_error("decode_backends", backends, f"a non-empty list of {sorted(BACKENDS)}")


def check_device(device: str) -> None:
    """`device` is auto, cpu, cuda or cuda:N (whether a GPU is usable is `kernel.device.choose_device`'s probe)."""
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        raise SettingsError(f"--device {device!r}: the kernel runs on auto (a GPU that passes a probe, else the "
                            "CPU), cpu, cuda or cuda:N")


def check_paths(videos_dir: Path, sample_submission: Path | None, out: Path) -> None:
    """The videos folder exists, and the submission and the files written beside it can be written: none is a
    folder, their names fit the file system, and the folder takes new files."""
    if not os.path.isdir(videos_dir):  # os.path: a name too long for the file system is no folder, not an error
        listed = (f"; {sample_submission} lists videos that would all get the prior"
                  if sample_submission is not None and os.path.isfile(sample_submission) else "")
        raise SettingsError(f"--videos {videos_dir}: no such folder{listed}; pass --videos DIR")
    check_out_files(out, output_files(out), "submission.csv")
    longest = writable_folder(out.parent, "--out", out)
    if len(os.fsencode(out.name)) + NAME_ROOM > longest:
        raise SettingsError(f"--out {out}: its name is {len(os.fsencode(out.name))} bytes, and files written beside it "
                            f"add up to {NAME_ROOM} ({checkpoint_path(out).name} and its temporary copy), over the "
                            f"{longest} bytes a name may have there; use a name of at most {longest - NAME_ROOM} bytes")


def check_out_files(out: Path, written: Iterable[Path], example: str) -> None:
    """Each file `written` for `--out out` is a regular file or new: no folder, no device (writing /dev/null as root
    would replace it) nor pipe (`example`: a file name to suggest instead)."""
    for path in written:
        if os.path.isdir(path):  # os.path: a name too long for the file system is no folder, not an error
            raise SettingsError(f"--out {out}: {path} is a folder; name a file, e.g. --out {out / example}")
        if os.path.exists(path) and not os.path.isfile(path):
            raise SettingsError(f"--out {out}: {path} is no regular file (a device or a pipe); name a new file")


def check_out_file(out: Path, inputs: Iterable[Path], example: str) -> None:
    """A command's one output file `out` (not the kernel's) is no folder, its folder takes files, and it is none of
    `inputs`: checked before any work."""
    check_out_files(out, [out], example)
    writable_folder(out.parent, "--out", out)
    check_not_an_input(out, inputs, [out])


def output_files(out: Path) -> tuple[Path, ...]:
    """What the kernel writes for the submission `out`: it, its checkpoint, in-flight marks and run summary."""
    return out, checkpoint_path(out), in_flight_path(out), summary_path(out)


def check_not_an_input(out: Path, inputs: Iterable[Path], written: Iterable[Path] | None = None) -> None:
    """No file `written` for `--out out` (by default the kernel's `output_files`) is one of `inputs`, however either
    is spelled (a link, a relative path, a hard link): an input is never overwritten."""
    written_keys = {path: file_keys(path) for path in (output_files(out) if written is None else written)}
    for source in inputs:
        source_keys = file_keys(source)
        for path, keys in written_keys.items():
            if keys & source_keys:
                raise SettingsError(f"--out {out}: writing {path} would overwrite the input {source}; pass --out a "
                                    "new file name")


def file_keys(path: Path) -> set:
    """What identifies the file `path` names: its absolute path with links resolved and, if it exists, its device and
    inode (a hard link has another path)."""
    keys: set = {os.path.realpath(path)}
    try:
        stat = os.stat(path)
    except OSError:  # no such file (yet): its resolved path alone names it
        return keys
    return keys | {(stat.st_dev, stat.st_ino)}


