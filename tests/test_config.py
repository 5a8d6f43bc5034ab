"""dfdc_core.config: the one settings loader of the kernel, training, the robustness report and the demo."""
import json

import pytest
import yaml

from dfdc_core.config import (
    SettingsError,
    load_settings,
    parse_overrides,
    read_settings,
    save_resolved,
)
from kernel.config import DEFAULT_CONFIG_PATH, load_config
from training.engine.train_config import DEFAULT_CONFIG, resolve_config
from training.tools.robustness import DEFAULT_SETTINGS, robustness_settings


def write(path, data):
    path.write_text(json.dumps(data) if path.suffix == ".json" else yaml.safe_dump(data))
    return path


def test_defaults_then_file_then_overrides_with_nested_merge(tmp_path):
    defaults = write(tmp_path / "defaults.yaml", {"a": 1, "b": 2, "aug": {"x": 1, "y": 2}})
    user = write(tmp_path / "user.json", {"b": 3, "aug": {"y": 5}})
    settings = load_settings(defaults, user, {"a": 7, "b": None}, merge=("aug",))
    assert settings == {"a": 7, "b": 3, "aug": {"x": 1, "y": 5}}
    assert load_settings(defaults, user)["aug"] == {"y": 5}  # without merge a nested mapping is replaced


@pytest.mark.parametrize("origin", ["file", "override"])
def test_unknown_key_names_origin_and_known_keys(tmp_path, origin):
    defaults = write(tmp_path / "defaults.yaml", {"alpha": 1})
    user = write(tmp_path / "user.yaml", {"alhpa": 2}) if origin == "file" else None
    overrides = {"alhpa": 2} if origin == "override" else None
    with pytest.raises(KeyError) as error:
        load_settings(defaults, user, overrides)
    assert isinstance(error.value, SettingsError)
    text = str(error.value)
    assert "alhpa" in text and "alpha" in text and str(defaults) in text and not text.startswith("'")
    assert (str(user) in text) if user else text.startswith("overrides")


@pytest.mark.parametrize("name,text,error,message", [
    ("missing.yaml", None, FileNotFoundError, "missing.yaml: file not found"),
    ("bad.json", "{", SettingsError, "bad.json: not valid JSON"),
    ("bad.yaml", "a: [1,", SettingsError, "bad.yaml: not valid YAML"),
    ("list.yaml", "- 1\n", SettingsError, "list.yaml: expected a mapping")])
def test_bad_files_are_settings_errors_naming_the_file(tmp_path, name, text, error, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(error, match=message):
        read_settings(tmp_path / name)


def test_an_empty_yaml_file_is_an_empty_mapping(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert read_settings(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize("name", ["run.yaml", "run.json"])
def test_resolved_settings_round_trip(tmp_path, name):
    settings = {"b": [1, 2], "a": {"c": None}}
    save_resolved(settings, tmp_path / "out" / name)
    assert read_settings(tmp_path / "out" / name) == settings
    assert list(read_settings(tmp_path / "out" / name)) == ["b", "a"]


def test_every_settings_file_of_the_kit_goes_through_the_loader(tmp_path):
    for load, defaults in ((lambda path: load_config(path), DEFAULT_CONFIG_PATH),
                           (lambda path: resolve_config(path, 0), DEFAULT_CONFIG),
                           (robustness_settings, DEFAULT_SETTINGS)):
        with pytest.raises(KeyError, match=str(defaults)):
            load(write(tmp_path / "typo.yaml", {"not_a_setting": 1}))
    config = resolve_config(write(tmp_path / "aug.yaml", {"crops": "x", "augment": {"hflip": {"p": 0.0}}}), 0)
    assert config["augment"]["hflip"] == {"p": 0.0} and len(config["augment"]) > 1  # merged per transform


def test_training_keeps_the_defaults_it_was_imported_with_when_default_yaml_changes(tmp_path, monkeypatch):
    """A recipe trains every fold in one process: a default.yaml edited mid-run (a new augmentation, another epoch
    count) must not reach its later folds, whose code was imported before the edit."""
    from training.engine import train_config

    run = write(tmp_path / "run.yaml", {"crops": "x", "augment": {"hflip": {"p": 0.0}}})
    before = resolve_config(run, 1)
    edited = read_settings(DEFAULT_CONFIG)
    edited["epochs"] = before["epochs"] + 5
    edited["augment"] = {**edited["augment"], "brand_new_transform": {"p": 0.5}}
    monkeypatch.setattr(train_config, "DEFAULT_CONFIG", write(tmp_path / "default.yaml", edited))
    after = resolve_config(run, 1)
    assert after == before and after["epochs"] != edited["epochs"] and "brand_new_transform" not in after["augment"]
    after["augment"]["hflip"]["p"] = 1.0  # a resolved config is the caller's own: the snapshot stays as read
    assert resolve_config(run, 1) == before


def test_the_notebooks_own_prior_and_clip_are_the_kernels_defaults_and_the_metrics_clip():
    """kernel/kaggle.py runs before the kit is installed (only dfdc_core/io.py is inlined into it), so it holds its own
    copy of the prior and clip it writes: they must stay the kernel's defaults and the metric's clip."""
    from dfdc_core import metrics
    from kernel import kaggle

    config = load_config()
    assert kaggle.PRIOR == config["prior"] and list(kaggle.CLIP) == config["clip"] == list(metrics.CLIP)


def test_set_pairs_are_read_as_json_else_as_text():
    assert parse_overrides(["frames=16", "prior=0.3", "tta_hflip=false", "clip=[0.1, 0.9]", "aggregation=mean",
                            "detect_threads=null", "name=a=b"]) == {
        "frames": 16, "prior": 0.3, "tta_hflip": False, "clip": [0.1, 0.9], "aggregation": "mean",
        "detect_threads": None, "name": "a=b"}
    assert parse_overrides([]) == {}
    with pytest.raises(SettingsError, match=r"^--set 'frames': write KEY=VALUE, e.g. --set frames=16$"):
        parse_overrides(["frames"])


def test_train_fold_set_overrides_the_run_config_and_a_bad_one_exits_2(tmp_path, capsys):
    from training.train_fold import main as train_main

    path = write(tmp_path / "run.yaml", {"crops": "x", "epochs": 3})
    assert resolve_config(path, 0, {"epochs": 1, "augment": {"hflip": {"p": 0.0}}})["epochs"] == 1
    merged = resolve_config(path, 0, {"augment": {"hflip": {"p": 0.0}}})["augment"]
    assert merged["hflip"] == {"p": 0.0} and len(merged) > 1  # merged per transform, as a file's augment is
    assert train_main(["--config", str(path), "--fold", "0", "--set", "epochz=1"]) == 2
    assert "overrides: unknown keys ['epochz']" in capsys.readouterr().err
