"""The one settings loader: defaults in a file beside the code, overridden by a user's file, then by keyword overrides.

Used by the kernel (`kernel/default_config.json`), training (`training/configs/default.yaml`), the robustness report
(`training/configs/robustness.yaml`) and the demo (`demo/config.yaml`). A `.json` file is read as JSON, anything else
as YAML; mappings named in `merge` are merged key by key; a key the defaults do not have is an error naming the file
and the known keys. `parse_overrides` reads a command's `--set KEY=VALUE` flags; `save_resolved` writes what a run
used beside its outputs; `writable_folder` checks a folder a command writes to. Standard library only (YAML is
imported when a YAML file is read), so `python -m kernel` can load it before `--block-network`.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from dfdc_core.io import write_atomic


class SettingsError(ValueError):
    """A setting, path or input file is unusable; the message names it and the fix."""


class SettingsFileNotFound(SettingsError, FileNotFoundError):
    """A settings file named by the user does not exist."""


class UnknownSetting(SettingsError, KeyError):
    """A settings file or override names a key the defaults do not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of the regular file `path`; an `OSError` for anything else, without blocking or reading forever: a
    folder (`IsADirectoryError`), a device such as /dev/zero, a named pipe with no writer."""
    handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(handle, "rb") as file:
        mode = os.fstat(handle).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file (a device or a pipe)", str(path))
        return file.read()


def writable_folder(folder: Path, flag: str, given: Path) -> int:
    """Make `folder` if it is missing and check that it takes a new file (`SettingsError` naming `flag` `given`
    otherwise); return the longest file name, in bytes, it takes."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
        return os.pathconf(folder, "PC_NAME_MAX")
    except OSError as error:
        raise SettingsError(f"{flag} {given}: cannot write in {folder} ({error}); pick a writable folder") from error


def read_settings(path: Path, what: str = "--config") -> dict[str, Any]:
    """The mapping in a JSON (`.json`) or YAML file; `SettingsError` if it is missing, unparsable or not a mapping."""
    path = Path(path)
    if not os.path.isfile(path):  # os.path: a name too long for the file system is not found, not an error
        raise SettingsFileNotFound(f"{what} {path}: file not found")
    data = parse_json(path, what) if path.suffix.lower() == ".json" else parse_yaml(path, what)
    if not isinstance(data, dict):
        raise SettingsError(f"{what} {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def parse_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError
        raise SettingsError(f"{what} {path}: not valid JSON ({error})") from error


def parse_yaml(path: Path, what: str) -> Any:
    """The YAML document of `path`; an empty file is an empty mapping."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SettingsError(f"{what} {path}: not valid YAML ({error})") from error
    return {} if data is None else data


def load_settings(defaults: Path, path: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
                  what: str = "--config", merge: tuple[str, ...] = (),
                  snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """`defaults`, then the keys of the file at `path`, then the `overrides` that are not None. `snapshot`: the
    defaults as read from that file earlier (copied, never re-read), so a long run keeps the defaults it started with."""
    settings = copy.deepcopy(snapshot) if snapshot is not None else read_settings(defaults, "defaults")
    updates = [] if path is None else [(f"{what} {path}", read_settings(Path(path), what))]
    updates.append(("overrides", {key: value for key, value in (overrides or {}).items() if value is not None}))
    for origin, update in updates:
        unknown = sorted(set(update) - set(settings))
        if unknown:
            raise UnknownSetting(f"{origin}: unknown keys {unknown}; the known keys are those of {defaults}: "
                                 f"{sorted(settings)}")
        for key in merge:
            if key in update:
                update[key] = {**settings[key], **(update[key] or {})}
        settings.update(update)
    return settings


def save_resolved(settings: dict[str, Any], path: Path) -> None:
    """Write the settings a run used (JSON for `.json`, else YAML in the settings' own order), atomically."""
    if path.suffix.lower() == ".json":
        write_atomic(path, json.dumps(settings, indent=1))
    else:
        import yaml

        write_atomic(path, yaml.safe_dump(settings, sort_keys=False))


def parse_overrides(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` pairs (a command's repeatable `--set`) as settings overrides, each value read as JSON (a number,
    true, null, a list), else kept as text; `SettingsError` naming a pair without '='. Which keys exist is
    `load_settings`'s check."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SettingsError(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} frames=16")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides
