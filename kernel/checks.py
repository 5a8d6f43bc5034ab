"""Settings checked before the first video: config, device, paths, the manifest's entries and the stacker.

A bad setting stops the kernel with a message naming it and the fix: `SettingsError`, or `ManifestError` for the
manifest and the files it names; `python -m kernel` turns either into exit 2. Nothing here reads a video.
"""
from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from dfdc_core.aggregate import STRATEGIES, Stacker
from dfdc_core.config import SettingsError
from dfdc_core.models import Manifest, ManifestError, load_manifest, model_family
from dfdc_core.video import BACKENDS
from kernel.submission import checkpoint_path

POSITIVE_INTEGERS = ("frames", "max_frame_side", "prefetch_videos", "detect_long_side", "detect_batch_size",
                     "mtcnn_min_face_size", "classify_batch_size", "max_persons")
SHARES = ("prior", "min_face_score", "track_iou", "min_track_share", "min_track_size_ratio")  # numbers in [0, 1]
NON_NEGATIVE = ("min_face_px", "track_max_shift", "crop_margin", "still_pad", "time_budget_hours")
MANIFEST_KEYS = ("arch", "file", "sha256", "input_size")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def is_numbers(value: Any, count: int) -> bool:
    """A list of `count` finite numbers."""
    return isinstance(value, (list, tuple)) and len(value) == count and all(is_number(v) for v in value)


def setting_error(key: str, value: Any, wanted: str) -> SettingsError:
    return SettingsError(f"kernel setting '{key}' is {value!r}: it must be {wanted}; fix it in the --config JSON "
                         "or its command-line flag")


def check_config(config: dict[str, Any]) -> None:
    """Every kernel setting has a usable type and range (`SettingsError` naming the first that does not)."""
    for key in POSITIVE_INTEGERS:
        if not is_positive_int(config[key]):
            raise setting_error(key, config[key], "a whole number above 0")
    for key in SHARES:
        if not (is_number(config[key]) and 0 <= config[key] <= 1):
            raise setting_error(key, config[key], "a number from 0 to 1")
    for key in NON_NEGATIVE:
        if not (is_number(config[key]) and config[key] >= 0):
            raise setting_error(key, config[key], "a finite number of 0 or more")
    if config["detect_threads"] is not None and not is_positive_int(config["detect_threads"]):
        raise setting_error("detect_threads", config["detect_threads"],
                            "null (all cores but one) or a whole number above 0")
    thresholds = config["mtcnn_thresholds"]
    if not (is_numbers(thresholds, 3) and all(0 <= t <= 1 for t in thresholds)):
        raise setting_error("mtcnn_thresholds", thresholds, "3 numbers from 0 to 1, one per MTCNN stage")
    clip = config["clip"]
    if not (is_numbers(clip, 2) and 0 <= clip[0] < clip[1] <= 1):
        raise setting_error("clip", clip, "[low, high] with 0 <= low < high <= 1")
    if not isinstance(config["tta_hflip"], bool):
        raise setting_error("tta_hflip", config["tta_hflip"], "true or false")
    if config["aggregation"] not in STRATEGIES:
        raise setting_error("aggregation", config["aggregation"], f"one of {sorted(STRATEGIES)}")
    backends = config["decode_backends"]
    if not (isinstance(backends, list) and backends and all(name in BACKENDS for name in backends)):
        raise setting_error("decode_backends", backends, f"a non-empty list of {sorted(BACKENDS)}")


def check_device(device: str) -> None:
    """`device` is auto, cpu, cuda or cuda:N (whether a GPU is usable is `kernel.device.choose_device`'s probe)."""
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        raise SettingsError(f"--device {device!r}: the kernel runs on auto (a GPU that passes a probe, else the "
                            "CPU), cpu, cuda or cuda:N")


def check_paths(videos_dir: Path, sample_submission: Path | None, out: Path) -> None:
    """The videos folder exists and the submission and its checkpoint can be written."""
    if not videos_dir.is_dir():
        listed = (f"; {sample_submission} lists videos that would all get the prior"
                  if sample_submission is not None and sample_submission.is_file() else "")
        raise SettingsError(f"--videos {videos_dir}: no such folder{listed}; pass --videos DIR")
    for path in (out, checkpoint_path(out)):
        if path.is_dir():
            raise SettingsError(f"--out {out}: {path} is a folder; name a file, e.g. --out {out / 'submission.csv'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):
            pass
    except OSError as error:
        raise SettingsError(f"--out {out}: cannot write in {out.parent} ({error}); pick a writable folder") from error


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
        return json.loads(path.read_text())
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ManifestError(f"{path}: {what} not found; {fix}") from error
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
        for key in ("mean", "std"):
            if key in entry and not is_numbers(entry[key], 3):
                raise ManifestError(f"{where}: '{key}' is {entry[key]!r}; it must be 3 numbers, one per RGB channel")
        if "std" in entry and min(entry["std"]) <= 0:
            raise ManifestError(f"{where}: 'std' is {entry['std']!r}; every value must be above 0 (it divides)")
        margin = entry.get("crop_margin")
        if margin is not None and not (is_number(margin) and margin >= 0):
            raise ManifestError(f"{where}: 'crop_margin' is {entry['crop_margin']!r}; it must be a number >= 0 (the "
                                "margin of the crops the model was trained on, from extract_faces.py's settings.json)")
        for key in ("bytes", "num_classes"):
            if key in entry and not is_positive_int(entry[key]):
                raise ManifestError(f"{where}: '{key}' is {entry[key]!r}; it must be a whole number above 0")
        check_arch(entry["arch"], where)


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
    """The stacker JSON through `Stacker.from_json`; `ManifestError` if it is not JSON or lacks its keys."""
    try:
        return Stacker.from_json(path)
    except OSError as error:
        raise ManifestError(f"stacker {path}: cannot read it ({error}); put it beside the manifest") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ManifestError(f"stacker {path}: not valid JSON ({error}); rebuild it with python -m ensemble.stack") \
            from error
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ManifestError(f"stacker {path}: unusable ({error}); rebuild it with python -m ensemble.stack") \
            from error


def check_stacker(stacker: Stacker, model_names: set[str]) -> None:
    """Finite coefficients and intercept, one coefficient per feature, every feature of a model (or group) of
    the manifest, and a known aggregation."""
    coef = np.asarray(stacker.coef, dtype=np.float64)
    intercept = np.asarray(stacker.intercept, dtype=np.float64)
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ManifestError(f"stacker: coefficients or intercept are not finite (NaN or inf); refit it with "
                            f"python -m ensemble.stack (intercept {stacker.intercept}, "
                            f"{int((~np.isfinite(coef)).sum())} non-finite coefficients)")
    if len(coef) != len(stacker.feature_names):
        raise ManifestError(f"stacker: {len(stacker.feature_names)} feature names but {len(coef)} coefficients")
    unknown = [name for name in stacker.feature_names
               if not any(name.startswith(f"{model}.") for model in model_names)]
    if unknown:
        raise ManifestError(f"stacker: features {unknown[:5]} name no model of the manifest {sorted(model_names)}; "
                            "fit the stacker on these models' predictions")
    aggregation = getattr(stacker, "aggregation", None)
    if aggregation is not None and aggregation not in STRATEGIES:
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
