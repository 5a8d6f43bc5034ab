"""Settings checked before the first video: config, device, paths, the manifest's entries and the stacker.

A bad setting stops the kernel with a message naming it and the fix: `SettingsError`, or `ManifestError` for the
manifest and the files it names; `python -m kernel` turns either into exit 2. Nothing here reads a video.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Collection, Iterable

import numpy as np

from dfdc_core.aggregate import FEATURE_STATS, STRATEGIES, Stacker, feature_name
from dfdc_core.config import SettingsError, read_regular_file, writable_folder
from dfdc_core.models import Manifest, ManifestError, load_manifest, model_family
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
MAX_CROP_MARGIN = 2.0  # a crop 5 faces wide: beyond it the crop is mostly zero padding, and its memory unbounded
MAX_STILL_PAD = 2.0  # an image padded to 5 times its side: room for any crop margin allowed above
# A setting that cannot exceed another: (key, the other, why)
NOT_ABOVE = (("mtcnn_min_face_size", "detect_long_side", "no larger face fits the detector's copy of a frame"),
             ("min_face_px", "max_frame_side", "no face is larger than the frame"))
MANIFEST_KEYS = ("arch", "file", "sha256", "input_size")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_INPUT_SIZE = 1024  # pixels: a batch of larger model inputs exhausts memory (timm's largest models use 800)
MAX_CLASSES = 1000
MIN_STD = 1e-3  # pixels are scaled to [0, 1]: a smaller std blows the model's inputs up towards inf
MAX_COEF = 1e6  # |stacker coefficient or intercept|: the features are bounded (|logit| <= 7), so the sum stays finite
NAME_ROOM = 28  # bytes added to --out's file name: '.partial.jsonl', then write_atomic's '.<name>.XXXXXXXX.tmp'


def is_real(value: Any) -> bool:
    """An int or float, not a bool (NaN and inf included)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return is_real(value) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_numbers(value: Any, count: int) -> bool:
    """A list of `count` finite numbers."""
    return isinstance(value, (list, tuple)) and len(value) == count and all(is_number(v) for v in value)


def is_one_of(value: Any, choices: Collection[str]) -> bool:
    """A string among `choices` (a list or a dict given as `value` is no error, just not one of them)."""
    return isinstance(value, str) and value in choices


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


def check_manifest(path: Path) -> Manifest:
    """Check the manifest's JSON and its stacker before any weight is loaded; return the parsed manifest.

    The weight files themselves (size, sha256, finite values) are checked when `load_scorer` loads them.
    """
    data = read_json(path, "manifest", "pass --manifest PATH to a weights_manifest.json")
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: the top level is a JSON {type(data).__name__}; a manifest is an object "
                            '{"models": [...], "stacker": null}')
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{path}: 'models' is empty or not a list; add at least one entry "
                            "(name, arch, file, sha256, bytes, input_size, mean, std)")
    check_manifest_entries(entries, path)
    if data.get("stacker") is not None and not (isinstance(data["stacker"], str) and data["stacker"]):
        raise ManifestError(f"{path}: 'stacker' is {data['stacker']!r}; name the stacker JSON beside the manifest "
                            "or set it to null")
    manifest = load_manifest(path)
    if data.get("drop_order") is not None:
        check_drop_order(data["drop_order"], [spec.name for spec in manifest.models], path)
    if manifest.stacker is not None:
        feature_sources = {spec.name for spec in manifest.models} | {
            entry["group"] for entry in entries if isinstance(entry.get("group"), str)}
        check_stacker(read_stacker(manifest.stacker), feature_sources)
    return manifest


def read_json(path: Path, what: str, fix: str) -> Any:
    """The parsed JSON at `path`; `ManifestError` naming `what` if it is missing or not JSON."""
    try:
        return json.loads(read_regular_file(path).decode())
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ManifestError(f"{path}: {what} not found; {fix}") from error
    except OSError as error:
        raise ManifestError(f"{path}: cannot read the {what} ({error.strerror or error}); {fix}") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: {what} is not valid JSON ({error}); {fix}") from error


def check_manifest_entries(entries: list, path: Path) -> None:
    """Each model entry has the keys, types and ranges the kernel needs, and names a known timm model."""
    for index, entry in enumerate(entries):
        where = f"{path}: models[{index}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} is a JSON {type(entry).__name__}; each model is an object")
        missing = [key for key in MANIFEST_KEYS if key not in entry]
        if missing:
            raise ManifestError(f"{where} lacks {missing}")
        if "name" in entry and not (isinstance(entry["name"], str) and entry["name"]):
            raise ManifestError(f"{where}: 'name' is {entry['name']!r}; it must be a non-empty string")
        if not (isinstance(entry["file"], str) and entry["file"]):
            raise ManifestError(f"{where}: 'file' is {entry['file']!r}; name the weight file beside the manifest")
        if not (isinstance(entry["sha256"], str) and SHA256.fullmatch(entry["sha256"])):
            raise ManifestError(f"{where}: 'sha256' is {entry['sha256']!r}; it must be the file's 64 hex digit "
                                "SHA-256 (dfdc_core.models.manifest_entry computes it)")
        if not is_positive_int(entry["input_size"]):
            raise ManifestError(f"{where}: 'input_size' is {entry['input_size']!r}; it must be a whole number of "
                                "pixels above 0 (the size the model was trained at)")
        if entry["input_size"] > MAX_INPUT_SIZE:
            raise ManifestError(f"{where}: 'input_size' is {entry['input_size']}; it must be at most "
                                f"{MAX_INPUT_SIZE} pixels (a batch of larger inputs exhausts memory)")
        if "group" in entry and entry["group"] is not None and not (isinstance(entry["group"], str) and entry["group"]):
            raise ManifestError(f"{where}: 'group' is {entry['group']!r}; it must be a non-empty string (the model "
                                "group its folds share) or null")
        check_normalisation(entry, where)
        margin = entry.get("crop_margin")
        if margin is not None and not (is_number(margin) and margin >= 0):
            raise ManifestError(f"{where}: 'crop_margin' is {entry['crop_margin']!r}; it must be a number >= 0 (the "
                                "margin of the crops the model was trained on, from extract_faces.py's settings.json)")
        if margin is not None and margin > MAX_CROP_MARGIN:
            raise ManifestError(f"{where}: 'crop_margin' is {margin}; it must be at most {MAX_CROP_MARGIN} (a crop "
                                f"{2 * MAX_CROP_MARGIN + 1:g} faces wide)")
        for key in ("bytes", "num_classes"):
            if key in entry and not is_positive_int(entry[key]):
                raise ManifestError(f"{where}: '{key}' is {entry[key]!r}; it must be a whole number above 0")
        check_classes(entry, where)
        check_arch(entry["arch"], where)


def check_normalisation(entry: dict, where: str) -> None:
    """`mean` and `std`, when given, are 3 numbers each for pixels scaled to [0, 1]: means in [0, 1], stds from
    `MIN_STD` (a smaller one blows the inputs up to inf, so every video would get the prior)."""
    for key in ("mean", "std"):
        if key in entry and not is_numbers(entry[key], 3):
            raise ManifestError(f"{where}: '{key}' is {entry[key]!r}; it must be 3 numbers, one per RGB channel")
    if "std" in entry and min(entry["std"]) <= 0:
        raise ManifestError(f"{where}: 'std' is {entry['std']!r}; every value must be above 0 (it divides)")
    if "std" in entry and min(entry["std"]) < MIN_STD:
        raise ManifestError(f"{where}: 'std' is {entry['std']!r}; every value must be at least {MIN_STD} (pixels are "
                            "scaled to [0, 1]; a smaller std makes the model's inputs overflow)")
    if "mean" in entry and not all(0 <= value <= 1 for value in entry["mean"]):
        raise ManifestError(f"{where}: 'mean' is {entry['mean']!r}; every value must be from 0 to 1 (pixels are "
                            "scaled to [0, 1] before the mean is taken off)")


def check_classes(entry: dict, where: str) -> None:
    """A multi-class entry's `num_classes` is at most `MAX_CLASSES`, its `classes` (if given) distinct non-empty
    names and its `real_class` a name or an index (whether it is one of them is `class_keys`'s check)."""
    if entry.get("num_classes", 1) > MAX_CLASSES:
        raise ManifestError(f"{where}: 'num_classes' is {entry['num_classes']}; it must be at most {MAX_CLASSES}")
    classes = entry.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)
                                    and len(set(classes)) == len(classes)):
        raise ManifestError(f"{where}: 'classes' is {classes!r}; it must be a list of distinct class names, one per "
                            "output of the model")
    real = entry.get("real_class", 0)
    if not (isinstance(real, str) or (isinstance(real, int) and not isinstance(real, bool))):
        raise ManifestError(f"{where}: 'real_class' is {real!r}; it must be the name (in 'classes') or the index of "
                            "the output that means real")


def check_arch(arch: Any, where: str) -> None:
    """`arch` is a timm model name of a supported family (checked by name: nothing is built)."""
    import timm

    if not isinstance(arch, str):
        raise ManifestError(f"{where}: 'arch' is {arch!r}; it must be a timm model name")
    try:
        model_family(arch)
    except ValueError as error:
        raise ManifestError(f"{where}: {error}") from error
    if not timm.is_model(arch):
        raise ManifestError(f"{where}: 'arch' {arch!r} is not a model of timm {timm.__version__}; "
                            f"see timm.list_models('{arch.split('_')[0]}*')")


def read_stacker(path: Path) -> Stacker:
    """The stacker JSON through `Stacker.from_dict`, its values' types checked (`check_stacker_part`);
    `ManifestError` if it is not JSON, lacks its keys or holds a value of the wrong type."""
    try:
        data = json.loads(read_regular_file(path).decode())
    except OSError as error:
        raise ManifestError(f"stacker {path}: cannot read it ({error}); put it beside the manifest") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"stacker {path}: not valid JSON ({error}); rebuild it with python -m ensemble.stack") \
            from error
    try:
        stacker = Stacker.from_dict(data, path)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ManifestError(f"stacker {path}: unusable ({error}); rebuild it with python -m ensemble.stack") \
            from error
    check_stacker_part(data, f"stacker {path}")
    for index, variant in enumerate(data.get("variants", [])):
        check_stacker_part(variant, f"stacker {path}: variants[{index}]")
    return stacker


def check_stacker_part(part: dict, where: str) -> None:
    """The stacker's (or a variant's) feature names are a non-empty list of strings, its coefficients a list of
    numbers and its intercept a number (whether they are finite is `check_stacker`'s question)."""
    names, coef = part["feature_names"], part["coef"]
    if not (isinstance(names, list) and names and all(isinstance(name, str) for name in names)):
        raise ManifestError(f"{where}: 'feature_names' is {names!r}; it must be a non-empty list of feature names "
                            "'<model or group>.<statistic>' (with none, every video gets one score)")
    if not (isinstance(coef, list) and all(is_real(value) for value in coef)):
        raise ManifestError(f"{where}: 'coef' is {coef!r}; it must be a list of numbers, one per feature")
    if not is_real(part["intercept"]):
        raise ManifestError(f"{where}: 'intercept' is {part['intercept']!r}; it must be a number")


def check_stacker(stacker: Stacker, model_names: set[str]) -> None:
    """Finite coefficients and intercept of at most `MAX_COEF`, one coefficient per feature, every feature a
    statistic the kernel computes of a model (or group) of the manifest, and a known aggregation."""
    coef = np.asarray(stacker.coef, dtype=np.float64)
    intercept = np.asarray(stacker.intercept, dtype=np.float64)
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ManifestError(f"stacker: coefficients or intercept are not finite (NaN or inf); refit it with "
                            f"python -m ensemble.stack (intercept {stacker.intercept}, "
                            f"{int((~np.isfinite(coef)).sum())} non-finite coefficients)")
    if np.abs(coef).max(initial=abs(stacker.intercept)) > MAX_COEF:
        raise ManifestError(f"stacker: a coefficient or the intercept is beyond ±{MAX_COEF:g} (intercept "
                            f"{stacker.intercept}, coefficients {stacker.coef.tolist()[:5]}): scores would overflow; "
                            "refit it with python -m ensemble.stack")
    if len(coef) != len(stacker.feature_names):
        raise ManifestError(f"stacker: {len(stacker.feature_names)} feature names but {len(coef)} coefficients")
    unknown = [name for name in stacker.feature_names
               if not any(name.startswith(f"{model}.") for model in model_names)]
    if unknown:
        raise ManifestError(f"stacker: features {unknown[:5]} name no model of the manifest {sorted(model_names)}; "
                            "fit the stacker on these models' predictions")
    computed = {feature_name(model, stat) for model in model_names for stat in FEATURE_STATS}
    unknown = [name for name in stacker.feature_names if name not in computed]
    if unknown:
        raise ManifestError(f"stacker: features {unknown[:5]} are no statistic the kernel computes "
                            f"({list(FEATURE_STATS)}); fit the stacker with python -m ensemble.stack --features")
    aggregation = getattr(stacker, "aggregation", None)
    if aggregation is not None and not is_one_of(aggregation, STRATEGIES):
        raise ManifestError(f"stacker: aggregation {aggregation!r} is not one of {sorted(STRATEGIES)}")
    for variant in stacker.variants:
        try:
            check_stacker(variant, model_names)
        except ManifestError as error:
            raise ManifestError(f"{error} (in its variant for groups {variant.groups})") from error


def check_drop_order(drop_order: Any, model_names: list[str], path: Path) -> None:
    """`drop_order` lists models of the manifest, each once, most expendable first, and not every one of them."""
    where = f"{path}: 'drop_order'"
    if not (isinstance(drop_order, list) and all(isinstance(name, str) for name in drop_order)):
        raise ManifestError(f"{where} is {drop_order!r}; it must be a list of model names, most expendable first")
    unknown = sorted(set(drop_order) - set(model_names))
    if unknown:
        raise ManifestError(f"{where} names {unknown}, which are not models of the manifest {model_names}")
    if len(set(drop_order)) != len(drop_order):
        raise ManifestError(f"{where} names a model twice: {drop_order}")
    if set(drop_order) == set(model_names):
        raise ManifestError(f"{where} names every model; leave out at least one, which the kernel always keeps")
