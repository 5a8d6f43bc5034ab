"""`python -m kernel`'s flags and `--config`: what reaches `predict`, and a bad config key exits 2 naming it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import kernel.cli as cli
import kernel.pipeline as pipeline
from dfdc_core.config import SettingsError
from kernel.config import DEFAULT_CONFIG_PATH, load_config


def config_given(monkeypatch, tmp_path: Path, *flags: str) -> dict:
    """The config `python -m kernel FLAGS` hands to `predict` (which is not run)."""
    calls = []
    monkeypatch.setattr(pipeline, "predict", lambda *args, **kwargs: calls.append(args))
    assert cli.main(["--videos", str(tmp_path), "--out", str(tmp_path / "s.csv"), *flags]) == 0
    (args,) = calls
    return args[5]


def test_without_flags_the_defaults(monkeypatch, tmp_path):
    assert config_given(monkeypatch, tmp_path) == load_config()


def test_flags_override_the_config_file_which_overrides_the_defaults(monkeypatch, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"prior": 0.3, "aggregation": "confident", "detect_long_side": 640, "frames": 12,
                                "tta_hflip": True}))
    config = config_given(monkeypatch, tmp_path, "--config", str(path), "--aggregation", "trimmed_mean",
                          "--prior", "0.2", "--detect-batch-size", "8", "--detect-long-side", "320",
                          "--classify-batch-size", "16", "--max-frame-side", "1080", "--time-budget-hours", "2.5")
    assert config == dict(load_config(), prior=0.2, aggregation="trimmed_mean", detect_long_side=320, frames=12,
                          tta_hflip=True, detect_batch_size=8, classify_batch_size=16, max_frame_side=1080,
                          time_budget_hours=2.5)
    assert config_given(monkeypatch, tmp_path, "--config", str(path))["aggregation"] == "confident"


@pytest.mark.parametrize("text,message", [
    ('{"frames": 8, "framez": 9, "Prior": 0.5}',
     "--config {path}: unknown keys ['Prior', 'framez']; the known keys are those of " + str(DEFAULT_CONFIG_PATH)),
    ("[1, 2]", "--config {path}: expected a mapping of settings, got list"),
    ("{frames: 8}", "--config {path}: not valid JSON"),
])
def test_a_bad_config_file_exits_2_naming_it(monkeypatch, tmp_path, caplog, text, message):
    path = tmp_path / "config.json"
    path.write_text(text)
    monkeypatch.setattr(pipeline, "predict", lambda *args, **kwargs: pytest.fail("predict was called"))
    with caplog.at_level(logging.ERROR, logger="kernel"):
        assert cli.main(["--videos", str(tmp_path), "--out", str(tmp_path / "s.csv"), "--config", str(path)]) == 2
    (error,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert error.startswith(message.format(path=path))
    assert cli.main(["--videos", str(tmp_path), "--out", str(tmp_path / "s.csv"), "--config",
                     str(tmp_path / "absent.json")]) == 2


def test_set_overrides_any_setting_over_the_config_file_and_the_named_flags_win(monkeypatch, tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"still_pad": 0.1, "frames": 12}))
    config = config_given(monkeypatch, tmp_path, "--config", str(path), "--set", "still_pad=0.2", "--set",
                          "tta_hflip=true", "--set", "decode_backends=[\"opencv\"]", "--set", "aggregation=confident",
                          "--set", "frames=8", "--frames", "16")
    assert config == dict(load_config(), still_pad=0.2, tta_hflip=True, decode_backends=["opencv"],
                          aggregation="confident", frames=16)
    monkeypatch.setattr(pipeline, "predict", lambda *args, **kwargs: pytest.fail("predict was called"))
    for pair, message in (("frames", "--set 'frames': write KEY=VALUE, e.g. --set frames=16"),
                          ("=3", "--set '=3': write KEY=VALUE, e.g. --set frames=16"),
                          ("framez=3", "overrides: unknown keys ['framez']; the known keys are those of")):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="kernel"):
            assert cli.main(["--videos", str(tmp_path), "--out", str(tmp_path / "s.csv"), "--set", pair]) == 2
        (error,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
        assert error.startswith(message)


def test_an_unknown_key_from_python_is_refused_too():
    with pytest.raises(ValueError, match=r"^overrides: unknown keys \['framez'\]; the known keys are those of .*json"):
        load_config(framez=3)


def test_crashed_that_is_a_pipe_or_a_device_is_exit_2_without_blocking(tmp_path):
    from kernel.cli import read_crashed
    from tests.helpers import pipe_that_unblocks

    for path in (pipe_that_unblocks(tmp_path / "crashed.json"), Path("/dev/zero")):
        with pytest.raises(SettingsError, match=f"^--crashed {path}: cannot read it as JSON \\(.*not a regular file"):
            read_crashed(path)


# ------------------------------------------------------------------------------------------------ every command

REPO = Path(__file__).resolve().parents[1]


def setup_commands() -> dict[str, str]:
    """`COMMANDS` of setup.py (console script → module:function), read without running setup()."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    (node,) = [node for node in tree.body if isinstance(node, ast.Assign) and node.targets[0].id == "COMMANDS"]
    return ast.literal_eval(node.value)


def test_every_console_script_is_installed_and_names_a_command_main():
    """setup.py's console scripts are what `make install` installed, and each names the `main` of a command module
    that `python -m` runs too: through its `__main__` block, or its package's `__main__.py` (`python -m kernel`)."""
    from importlib import import_module
    from importlib.metadata import entry_points

    commands = setup_commands()
    installed = {point.name: point.value for point in entry_points(group="console_scripts")
                 if point.dist is not None and point.dist.name == "dfdc-kit"}
    assert installed == commands, "setup.py changed: run make install again"
    for target in commands.values():
        module_name, function = target.split(":")
        module = import_module(module_name)
        assert callable(getattr(module, function))
        package_main = Path(module.__file__).with_name("__main__.py")
        runs = module_name.endswith("__main__") or 'if __name__ == "__main__":' in Path(module.__file__).read_text() \
            or (package_main.is_file() and f"from {module_name} import {function}" in package_main.read_text())
        assert runs, f"{module_name}: nothing runs {function} under python -m"


def test_commands_never_import_one_another():
    """Entry points are thin over library modules: no command module imports another command's module, but for the
    self-test, which runs `python -m kernel`'s main in-process to check its exit codes."""
    import ast

    drives = {"kernel.selftest": {"kernel.cli"}}

    modules = {target.split(":")[0] for target in setup_commands().values()}
    for module in modules:
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        others = (modules - {module} - drives.get(module, set())) & imported
        assert not others, f"{module} imports the commands {sorted(others)}"


def test_train_fold_runs_as_a_script_as_the_docs_say():
    """`python training/train_fold.py --help` (the way users are told to train) works from the repository root."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "training/train_fold.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--fold" in result.stdout and "Train one fold" in result.stdout
