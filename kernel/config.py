"""Kernel configuration: `default_config.json` beside this file, overridden by a user JSON and flags.

Light on purpose (no numpy, no torch): `python -m kernel` reads it before `--block-network` has run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dfdc_core.config import load_settings

DEFAULT_CONFIG_PATH = Path(__file__).with_name("default_config.json")


def load_config(path: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """Defaults, then the keys of the JSON at `path`, then `overrides` that are not None."""
    return load_settings(DEFAULT_CONFIG_PATH, path, overrides)
