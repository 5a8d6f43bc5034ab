"""Classifier factory over timm names and the weights manifest (`weights_manifest.json`)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from dfdc_core.io import write_atomic

FAMILIES = {
    "xception": ("xception", "legacy_xception"),
    "efficientnet": ("efficientnet", "tf_efficientnet", "test_efficientnet"),
    "resnet": ("resnet", "test_resnet", "seresnet", "resnext"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_DICT_FIX = "export the model's weights with dfdc_core.models.save_fp16_state_dict (as training does)"
TORCH_KINDS = ("a zip archive (torch.save's format)", "a pickle")  # files torch.save writes
FILE_SIGNATURES = ((b"PK\x03\x04", TORCH_KINDS[0]), (b"\x80", TORCH_KINDS[1]), (b"\x89PNG", "a PNG image"),
                   (b"\xff\xd8\xff", "a JPEG image"))
TEXT_BYTES = frozenset(range(32, 127)) | frozenset(b"\t\n\r")


class ManifestError(ValueError):
    """The manifest or one of the files it names is unusable; the message names the file and the fix."""


class UnreadableWeights(ValueError):
    """`torch.load(weights_only=True)` cannot read a file; the message says what the file is and why."""


def model_family(arch: str) -> str:
    """The family ('xception', 'efficientnet', 'resnet') of a timm model name."""
    for family, prefixes in FAMILIES.items():
        if arch.startswith(prefixes):
            return family
    raise ValueError(f"model '{arch}' is not in a supported family; use a timm name starting with one of "
                     f"{sorted(p for prefixes in FAMILIES.values() for p in prefixes)}")


def create_classifier(arch: str, num_classes: int = 1, **timm_kwargs) -> torch.nn.Module:
    """A timm backbone of a supported family with a `num_classes` head (weights not loaded)."""
    import timm

    model_family(arch)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, **timm_kwargs)


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

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", self.name)


@dataclass(frozen=True)
class Manifest:
    models: tuple[ModelSpec, ...]
    stacker: Path | None
    path: Path
    drop_order: tuple[str, ...] | None = None  # models the time budget may drop, most expendable first
    crop_margin: float | None = None  # the one margin every model was trained with (None: not recorded)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(path: str | Path) -> Manifest:
    """Parse a manifest; file paths are resolved relative to the manifest's folder."""
    path = Path(path)
    if not os.path.isfile(path):  # os.path: a name too long for the file system is not found, not an error
        raise ManifestError(f"{path}: manifest not found; pass --manifest PATH to a weights_manifest.json")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: not valid JSON ({error})") from error
    entries = data.get("models")
    if not entries:
        raise ManifestError(f"{path}: 'models' is empty; add at least one entry "
                            "(name, arch, file, sha256, bytes, input_size, mean, std)")
    specs = []
    for index, entry in enumerate(entries):
        missing = [key for key in ("arch", "file", "sha256", "input_size") if key not in entry]
        if missing:
            raise ManifestError(f"{path}: models[{index}] lacks {missing}")
        specs.append(ModelSpec(
            name=entry.get("name", Path(entry["file"]).stem), arch=entry["arch"],
            file=path.parent / entry["file"], sha256=entry["sha256"].lower(), bytes=int(entry.get("bytes", -1)),
            input_size=int(entry["input_size"]), mean=tuple(entry.get("mean", IMAGENET_MEAN)),
            std=tuple(entry.get("std", IMAGENET_STD)), group=str(entry.get("group") or ""),
            crop_margin=float(entry["crop_margin"]) if entry.get("crop_margin") is not None else None,
            **class_keys(entry, f"{path}: models[{index}]")))
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: model names must be unique, got {names}")
    stacker = path.parent / data["stacker"] if data.get("stacker") else None
    drop_order = tuple(data["drop_order"]) if data.get("drop_order") is not None else None
    return Manifest(models=tuple(specs), stacker=stacker, path=path, drop_order=drop_order,
                    crop_margin=common_crop_margin(specs, path))


def common_crop_margin(specs: list[ModelSpec], path: Path) -> float | None:
    """The crop margin all models were trained with, or None when no entry records one.

    The kernel cuts one crop per face for every model, so models trained on crops of different margins (or some
    with a recorded margin and some without) cannot share a manifest.
    """
    margins = {spec.name: spec.crop_margin for spec in specs}
    if set(margins.values()) == {None}:
        return None
    if len(set(margins.values())) > 1:
        raise ManifestError(f"{path}: its models were trained on crops of different margins ({margins}; None: not "
                            "recorded), but the kernel cuts one crop per face for all of them; keep models of one "
                            "crop_margin in a manifest, or retrain on crops of one margin")
    return next(iter(margins.values()))


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


def fake_logit(logits: torch.Tensor, real_index: int = 0) -> torch.Tensor:
    """The logit of P(fake) for each row of `(n, C)` classifier outputs.

    One output (C = 1): the output itself. Several (C > 1, one of them "real"): log(sum of the fake classes'
    exp) - real logit, which is logit(1 - softmax[real]). Grad-CAM explains this quantity.
    """
    if logits.shape[1] == 1:
        return logits[:, 0]
    fakes = torch.cat([logits[:, :real_index], logits[:, real_index + 1:]], dim=1)
    return torch.logsumexp(fakes, dim=1) - logits[:, real_index]


def forward_logits(module: torch.nn.Module, batch: torch.Tensor, hflip: bool = False) -> torch.Tensor:
    """The model's outputs for a normalised `(n, 3, H, W)` batch; with `hflip`, averaged with those of the
    mirrored batch (test-time augmentation, the same in the kernel and in training's OOF predictions)."""
    logits = module(batch)
    if hflip:
        logits = (logits + module(torch.flip(batch, dims=[3]))) / 2
    return logits


def fake_probability(logits: torch.Tensor, real_index: int = 0) -> torch.Tensor:
    """P(fake) of each row of `(n, C)` outputs: sigmoid for one output, 1 - softmax[real] for several."""
    return torch.sigmoid(fake_logit(logits.float(), real_index))


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
    if manifest.stacker is not None and not os.path.isfile(manifest.stacker):
        raise ManifestError(f"stacker {manifest.stacker} named in {manifest.path} is missing")


def file_kind(path: Path) -> str:
    """What a file is by its first bytes, for messages: empty, a zip (torch.save's format), a pickle, an image, text,
    or data of another format."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        return f"a file that cannot be read ({error.strerror})"
    kinds = [kind for signature, kind in FILE_SIGNATURES if head.startswith(signature)]
    if not head or kinds:
        return kinds[0] if kinds else "an empty file"
    return "a text file" if set(head) <= TEXT_BYTES else "data of another format"


def load_failure(error: Exception) -> str:
    """The telling sentence of `torch.load`'s error: the weights-only unpickler's reason, else its first line's."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    line = (found.group(1) if found else next(iter(str(error).strip().splitlines()), "")).split(". ")[0]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def load_tensors(path: Path) -> Any:
    """What a torch file holds, read with `weights_only=True` (tensors and plain values: unpickling never runs other
    code); `UnreadableWeights` saying what the file is when torch cannot read it so: empty, text, an image, a
    truncated zip, or a whole pickled model (objects other than tensors, refused unread)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises EOFError, UnpicklingError, RuntimeError, KeyError, ... on such files
        kind, reason = file_kind(path), load_failure(error)
        if kind in TORCH_KINDS and "Unsupported global" in reason:
            raise UnreadableWeights(f"{kind} holding objects other than tensors and plain values (a whole pickled "
                                    f"model?), refused unread ({reason})") from error
        raise UnreadableWeights(f"{kind} that torch.load cannot read ({reason})") from error


def not_a_state_dict(value: Any) -> str | None:
    """None for a state_dict (a dict of names to tensors), else what `value` is instead, for messages."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}"
    wrong = [(key, item) for key, item in value.items()
             if not (isinstance(key, str) and isinstance(item, torch.Tensor))]
    return f"a dict whose entry {wrong[0][0]!r} is a {type(wrong[0][1]).__name__}, not a tensor" if wrong else None


def load_classifier(spec: ModelSpec, device: str = "cpu") -> torch.nn.Module:
    """Build `spec.arch`, load its state_dict (fp16 or fp32), eval mode; fp16 on CUDA, fp32 on CPU. `ManifestError`
    naming the file and what it holds when it is no state_dict of that architecture."""
    model = create_classifier(spec.arch, spec.num_classes)
    try:
        state = load_tensors(spec.file)
    except UnreadableWeights as error:
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') is {error}; {STATE_DICT_FIX}") from error
    if (held := not_a_state_dict(state)) is not None:
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') holds {held}, not a state_dict (names "
                            f"of tensors); {STATE_DICT_FIX}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ManifestError(f"weight file {spec.file} does not fit arch '{spec.arch}': {error}") from error
    model = model.to(device).eval()
    model = model.half() if device.startswith("cuda") else model.float()
    non_finite = [key for key, tensor in model.state_dict().items()
                  if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if non_finite:  # NaN/inf in the file, or fp32 values beyond fp16's range on CUDA
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') has NaN or infinite values in "
                            f"{non_finite[:5]}; its training diverged or the file is damaged: re-export or retrain it")
    return model


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
        margins = {m.get("crop_margin") for m in models}
        if len(margins) > 1:
            raise ManifestError(f"{path}: adding {sorted(names)} would mix models trained on crops of margins "
                                f"{sorted(margins, key=str)} (None: not recorded); the kernel cuts one crop per face, "
                                "so write them to another manifest (`manifest:` in the training config)")
        others = {key: value for key, value in data.items() if key not in ("models", "stacker")}
        write_manifest(path, models, stacker or data.get("stacker"), **others)


def save_fp16_state_dict(model: torch.nn.Module, path: str | Path) -> None:
    """Save `model`'s weights as an fp16 CPU state_dict (integer buffers kept as they are), atomically."""
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
