"""The weights manifest (`weights_manifest.json`): what it holds, read and checked once, and how training writes it.

`Manifest.load(path)` reads the manifest and its stacker, checks every entry (keys, types, ranges, a timm model of a
supported family), the drop order and the stacker's features and coefficients, and returns the one parsed object the
kernel, the bundle and the tools pass down; `verify_manifest` checks the weight files' sizes and sha256 before they
are loaded (`dfdc_core.models.load_classifier`). Anything unusable is a `ManifestError` naming the file, the entry and
the fix. `manifest_entry`, `write_manifest` and `update_manifest` write it, atomically.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from dfdc_core.aggregate import FEATURE_STATS, STRATEGIES, Stacker, feature_name
from dfdc_core.config import read_regular_file
from dfdc_core.io import write_atomic
from dfdc_core.preprocessing import (
    MAX_CROP_MARGIN,
    Preprocessing,
    preprocessing_problem,
    read_preprocessing,
)
from dfdc_core.values import is_number, is_numbers, is_one_of, is_positive_int, is_real

FAMILIES = {
    "xception": ("xception", "legacy_xception"),
    "efficientnet": ("efficientnet", "tf_efficientnet", "test_efficientnet"),
    "resnet": ("resnet", "test_resnet", "seresnet", "resnext"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MANIFEST_KEYS = ("arch", "file", "sha256", "input_size")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_INPUT_SIZE = 1024  # pixels: a batch of larger model inputs exhausts memory (timm's largest models use 800)
MAX_CLASSES = 1000
MIN_STD = 1e-3  # pixels are scaled to [0, 1]: a smaller std blows the model's inputs up towards inf
MAX_COEF = 1e6  # |stacker coefficient or intercept|: the features are bounded (|logit| <= 7), so the sum stays finite
MANIFEST_FIX = "pass --manifest PATH to a weights_manifest.json"


class ManifestError(ValueError):
    """The manifest or one of the files it names is unusable; the message names the file and the fix."""


def model_family(arch: str) -> str:
    """The family ('xception', 'efficientnet', 'resnet') of a timm model name."""
    for family, prefixes in FAMILIES.items():
        if arch.startswith(prefixes):
            return family
    raise ValueError(f"model '{arch}' is not in a supported family; use a timm name starting with one of "
                     f"{sorted(p for prefixes in FAMILIES.values() for p in prefixes)}")


@dataclass(frozen=True)
class ModelSpec:
    """One manifest entry: what to build, where its weights are and how to feed it."""

    name: str
    arch: str
    file: Path
    sha256: str
    bytes: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int = 1
    classes: tuple[str, ...] | None = None
    real_index: int = 0  # multi-class models: the output that means "real"
    group: str = ""      # fold models of one group are averaged; the stacker has one input per group
    crop_margin: float | None = None  # the margin of the crops it was trained on (None: not recorded)
    still_pad: float | None = None  # the padding of the stills among them (None: not recorded)
    preprocessing: Preprocessing | None = None  # what made its training crops, as recorded (None: not recorded)
    tta_hflip: bool | None = None  # whether its OOF scores, which fitted the stacker, averaged each crop with its
                                   # mirror image (None: not recorded; the kernel config's `tta_hflip` decides)

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.name)


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: its models, its stacker (file and parsed), the time budget's drop order and the crop
    margin its models were trained with. `content` is the bytes of the manifest and its stacker as read, which a
    kernel run's checkpoint signature hashes."""

    models: tuple[ModelSpec, ...]
    stacker_file: Path | None
    path: Path
    drop_order: tuple[str, ...] | None = None  # models the time budget may drop, most expendable first
    crop_margin: float | None = None  # the one margin every model was trained with (None: not recorded)
    still_pad: float | None = None  # the one still padding every model was trained with (None: not recorded)
    stacker: Stacker | None = field(default=None, compare=False)  # compared through `content`
    content: bytes = field(default=b"", repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and check the manifest at `path` and its stacker (`read_manifest`)."""
        return read_manifest(path)


def read_manifest(path: str | Path) -> Manifest:
    """`Manifest.load`: read and check the manifest at `path` and its stacker, before any weight is loaded; files are
    resolved relative to the manifest's folder. The weight files themselves (size, sha256, finite values) are checked
    as they are loaded (`verify_manifest`, `dfdc_core.models.load_classifier`). A plain function, so that mutation
    testing reaches it."""
    path = Path(path)
    content = read_file(path, "manifest", MANIFEST_FIX)
    data = parse_json(content, path, "manifest", MANIFEST_FIX)
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
    specs = model_specs(entries, path)
    if data.get("drop_order") is not None:
        check_drop_order(data["drop_order"], [spec.name for spec in specs], path)
    stacker_file, stacker = None, None
    if data.get("stacker") is not None:
        stacker_file = path.parent / data["stacker"]
        stacker, stacker_bytes = read_stacker(stacker_file)
        check_stacker(stacker, {spec.name for spec in specs} | {spec.group for spec in specs})
        content += stacker_bytes
    drop_order = tuple(data["drop_order"]) if data.get("drop_order") is not None else None
    return Manifest(models=tuple(specs), stacker_file=stacker_file, path=path, drop_order=drop_order,
                    crop_margin=common_geometry(specs, "crop_margin", path),
                    still_pad=common_geometry(specs, "still_pad", path), stacker=stacker, content=content)


def model_specs(entries: list[dict], path: Path) -> list[ModelSpec]:
    """The checked entries of the manifest `path` as model specs, defaults filled in; names must be unique."""
    specs = []
    for index, entry in enumerate(entries):
        preprocessing = read_preprocessing(entry["preprocessing"]) if entry.get("preprocessing") is not None else None
        crop_margin, still_pad = entry_geometry(entry)
        specs.append(ModelSpec(
            name=entry.get("name", Path(entry["file"]).stem), arch=entry["arch"],
            file=path.parent / entry["file"], sha256=entry["sha256"].lower(), bytes=int(entry.get("bytes", -1)),
            input_size=int(entry["input_size"]), mean=tuple(entry.get("mean", IMAGENET_MEAN)),
            std=tuple(entry.get("std", IMAGENET_STD)), group=str(entry.get("group") or ""), crop_margin=crop_margin,
            still_pad=still_pad, preprocessing=preprocessing, tta_hflip=entry.get("tta_hflip"),
            **class_keys(entry, f"{path}: models[{index}]")))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: model names must be unique, got {names}")
    return specs


def read_file(path: Path, what: str, fix: str) -> bytes:
    """The bytes of the regular file `path`; `ManifestError` naming `what` if it is missing or unreadable."""
    try:
        return read_regular_file(path)
    except (FileNotFoundError, IsADirectoryError) as error:
        raise ManifestError(f"{path}: {what} not found; {fix}") from error
    except OSError as error:
        raise ManifestError(f"{path}: cannot read the {what} ({error.strerror or error}); {fix}") from error


def parse_json(content: bytes, path: Path, what: str, fix: str) -> Any:
    """The JSON document `content` of the file `path`; `ManifestError` naming `what` if it is not JSON."""
    try:
        return json.loads(content.decode())
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
        if entry.get("preprocessing") is not None and (problem := preprocessing_problem(entry["preprocessing"])):
            raise ManifestError(f"{where}: 'preprocessing' is unusable: {problem} (training records it from the "
                                "crops' settings.json; re-export the model or drop the key)")
        if entry.get("preprocessing") is not None and margin is not None \
                and margin != entry["preprocessing"]["crop_margin"]:
            raise ManifestError(f"{where}: 'crop_margin' {margin} differs from its preprocessing's "
                                f"{entry['preprocessing']['crop_margin']}; keep the one the model was trained with")
        if entry.get("tta_hflip") is not None and not isinstance(entry["tta_hflip"], bool):
            raise ManifestError(f"{where}: 'tta_hflip' is {entry['tta_hflip']!r}; it must be true or false (whether "
                                "the model's OOF scores averaged each crop with its mirror image) or null")
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


def class_keys(entry: dict, where: str) -> dict:
    """`num_classes`, `classes` and `real_index` of a manifest entry (a single-logit model has none of them).

    A multi-class entry may name its classes and gives its real class as `real_class`: a name in
    `classes` or an index (default 0).
    """
    num_classes = int(entry.get("num_classes", 1))
    if num_classes == 1:
        return {}
    classes = tuple(entry["classes"]) if entry.get("classes") else None
    if classes is not None and len(classes) != num_classes:
        raise ManifestError(f"{where}: 'classes' has {len(classes)} names but num_classes is {num_classes}")
    real = entry.get("real_class", 0)
    if isinstance(real, str):
        if classes is None or real not in classes:
            raise ManifestError(f"{where}: real_class {real!r} is not one of classes {classes}")
        real = classes.index(real)
    if not 0 <= int(real) < num_classes:
        raise ManifestError(f"{where}: real_class {real} is not an index below num_classes {num_classes}")
    return {"num_classes": num_classes, "classes": classes, "real_index": int(real)}


def entry_geometry(entry: dict) -> tuple[float | None, float | None]:
    """The crop margin and still padding a checked manifest entry records (from its `preprocessing`, else its own
    `crop_margin`; None: not recorded)."""
    if entry.get("preprocessing") is not None:
        return float(entry["preprocessing"]["crop_margin"]), float(entry["preprocessing"]["still_pad"])
    return (float(entry["crop_margin"]) if entry.get("crop_margin") is not None else None), None


def common_geometry(specs: list[ModelSpec], key: str, path: Path) -> float | None:
    """The `crop_margin` or `still_pad` all models were trained with, or None when no entry records one.

    The kernel cuts one crop per face for every model, so models trained on crops of different margins or still
    paddings (or some with a recorded value and some without) cannot share a manifest.
    """
    values = {spec.name: getattr(spec, key) for spec in specs}
    if set(values.values()) == {None}:
        return None
    if len(set(values.values())) > 1:
        word = {"crop_margin": "margin", "still_pad": "still padding"}[key]
        raise ManifestError(f"{path}: its models were trained on crops of different {word}s ({values}; None: not "
                            f"recorded), but the kernel cuts one crop per face for all of them; keep models of one "
                            f"{key} in a manifest, or retrain on crops of one {word}")
    return next(iter(values.values()))


def read_stacker(path: Path) -> tuple[Stacker, bytes]:
    """The stacker JSON through `Stacker.from_dict`, its values' types checked (`check_stacker_part`), and the file's
    bytes; `ManifestError` if it is not JSON, lacks its keys or holds a value of the wrong type."""
    try:
        content = read_regular_file(path)
        data = json.loads(content.decode())
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
    return stacker, content


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


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_manifest(manifest: Manifest) -> None:
    """Check every weight file (and the stacker) exists and matches its sha256 and size."""
    for spec in manifest.models:
        if not os.path.isfile(spec.file):
            raise ManifestError(f"weight file {spec.file} (model '{spec.name}') is missing; "
                                f"attach it beside {manifest.path.name} or fix 'file' in {manifest.path}")
        if spec.bytes >= 0 and spec.file.stat().st_size != spec.bytes:
            raise ManifestError(f"weight file {spec.file} has {spec.file.stat().st_size} bytes, manifest says "
                                f"{spec.bytes}; the file is truncated or the manifest is stale")
        actual = sha256_of(spec.file)
        if actual != spec.sha256:
            raise ManifestError(f"weight file {spec.file} has sha256 {actual}, manifest {manifest.path} says "
                                f"{spec.sha256}; re-copy the file or regenerate the manifest")
    if manifest.stacker_file is not None and not os.path.isfile(manifest.stacker_file):
        raise ManifestError(f"stacker {manifest.stacker_file} named in {manifest.path} is missing")


def manifest_entry(name: str, arch: str, weights: Path, manifest_dir: Path, input_size: int,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, **extra) -> dict:
    """A manifest entry for a weight file, with its sha256 and size computed."""
    return {"name": name, "arch": arch, "file": str(Path(weights).resolve().relative_to(manifest_dir.resolve())),
            "sha256": sha256_of(weights), "bytes": Path(weights).stat().st_size, "input_size": int(input_size),
            "mean": list(mean), "std": list(std), **extra}


@contextmanager
def manifest_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside the manifest `path`, so folds trained in parallel do not lose each other's entries."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_manifest(path: Path, entries: list[dict], stacker: str | None = None, **other_keys) -> None:
    """A new manifest of `entries` (from `manifest_entry`), the stacker file name and any other top-level keys
    (`drop_order`), written atomically."""
    write_atomic(path, json.dumps({"models": entries, "stacker": stacker, **other_keys}, indent=1) + "\n")


def update_manifest(path: Path, entries: list[dict] = (), stacker: str | None = None) -> None:
    """Add `entries` to the manifest at `path` (created if missing), replacing entries of the same names, and name
    `stacker` as its stacker when given; its other keys (`drop_order`) are kept; under `manifest_lock`, atomic."""
    with manifest_lock(path):
        data = json.loads(path.read_text()) if path.is_file() else {"models": [], "stacker": None}
        names = {entry["name"] for entry in entries}
        models = [m for m in data.get("models", []) if m.get("name") not in names] + list(entries)
        geometries = {entry_geometry(m) for m in models}
        if len(geometries) > 1:
            raise ManifestError(f"{path}: adding {sorted(names)} would mix models trained on crops of (crop_margin, "
                                f"still_pad) {sorted(geometries, key=str)} (None: not recorded); the kernel cuts one "
                                "crop per face, so write them to another manifest (`manifest:` in the training config)")
        others = {key: value for key, value in data.items() if key not in ("models", "stacker")}
        write_manifest(path, models, stacker or data.get("stacker"), **others)
