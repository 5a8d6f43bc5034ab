"""The training config: `training/configs/default.yaml` overridden by a run's YAML/JSON file, checked before any data is
read."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from dfdc_core.config import load_settings, read_settings
from dfdc_core.manifest import model_family
from training.data.dataset import SAMPLERS, SBI_BASES
from training.engine.optim import OPTIMIZERS, SCHEDULES
from training.tools.defences import defence_from_config

DEFAULT_CONFIG = Path(__file__).parents[1] / "configs" / "default.yaml"
# read once, with the code: every fold of a recipe's one process trains with the defaults its code was imported beside,
# even if default.yaml is edited while it runs
DEFAULTS = read_settings(DEFAULT_CONFIG, "defaults")


def resolve_config(path: Path, fold: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults overridden by the file at `path`, then by `overrides` (`--set`; `augment` merged per transform),
    checked, for `fold`."""
    config = load_settings(DEFAULT_CONFIG, path, overrides, merge=("augment",), snapshot=DEFAULTS)
    config["fold"] = fold
    model_family(config["arch"])
    for key, allowed in (("optimizer", tuple(OPTIMIZERS)), ("schedule", tuple(SCHEDULES)),
                         ("sampler", tuple(SAMPLERS)), ("device", ("auto", "cpu", "cuda")),
                         ("export", ("last", "best"))):
        if config[key] not in allowed:
            raise ValueError(f"{path}: {key} is {config[key]!r}; choose one of {allowed}")
    check_sbi(config, path)
    check_validation(config, path)
    if not config["crops"]:
        raise ValueError(f"{path}: set 'crops' to the folder written by extract_faces.py")
    check_classes(config, path)
    group = config["group"] or re.sub(r"[_-]?fold\{fold\}", "", config["name"])
    config["name"] = config["name"].format(arch=config["arch"], fold=fold, input_size=config["input_size"])
    config["group"] = group.format(arch=config["arch"], input_size=config["input_size"])
    config["mean"], config["std"] = normalisation(config)
    defence_from_config(config)  # a bad adversarial/lipschitz setting fails here, before any data is read
    return config


def check_sbi(config: dict[str, Any], path: Path) -> None:
    """`sbi: {p: share, bases: crop|source}` needs one-logit models and a sampler that draws fakes (balanced or
    pairs)."""
    sbi = config["sbi"]
    if sbi is None:
        return
    if not isinstance(sbi, dict) or "p" not in sbi or not set(sbi) <= {"p", "bases"} \
            or not 0.0 <= float(sbi["p"]) <= 1.0 or sbi.get("bases", "crop") not in SBI_BASES:
        raise ValueError(f"{path}: sbi is {sbi!r}; write sbi: {{p: 0.5}} (the share of fakes that are self-blended), "
                         f"optionally with bases: one of {SBI_BASES} (how the real crops to blend are drawn)")
    if config["num_classes"] != 1 or config["sampler"] == "shuffle":
        raise ValueError(f"{path}: sbi needs num_classes: 1 and sampler: balanced or pairs")


def check_validation(config: dict[str, Any], path: Path) -> None:
    """`validate_every` is a whole number >= 0; choosing the best epoch or stopping early needs every epoch's."""
    every = config["validate_every"]
    if not (isinstance(every, int) and not isinstance(every, bool) and every >= 0):
        raise ValueError(f"{path}: validate_every is {every!r}; use a whole number of epochs (0: only at the end)")
    if every != 1 and (config["export"] == "best" or config["early_stopping"] is not None):
        raise ValueError(f"{path}: export: best and early_stopping compare every epoch's validation; "
                         "set validate_every: 1")


def check_classes(config: dict[str, Any], path: Path) -> None:
    """`num_classes`, `classes` and `real_class` agree (when the classes are listed)."""
    count, classes = config["num_classes"], config["classes"]
    if count < 1:
        raise ValueError(f"{path}: num_classes is {count}; use 1 (real/fake) or the number of classes")
    if count > 1 and classes is not None and (len(classes) != count or config["real_class"] not in classes):
        raise ValueError(f"{path}: classes {classes} must be num_classes ({count}) names including "
                         f"real_class {config['real_class']!r}")


def normalisation(config: dict[str, Any]) -> tuple[list[float], list[float]]:
    """The config's mean/std, or the timm pretrained_cfg values of its arch."""
    import timm

    pretrained_cfg = timm.models.get_pretrained_cfg(config["arch"])
    mean = config["mean"] or (pretrained_cfg.mean if pretrained_cfg else (0.485, 0.456, 0.406))
    std = config["std"] or (pretrained_cfg.std if pretrained_cfg else (0.229, 0.224, 0.225))
    return [float(v) for v in mean], [float(v) for v in std]
