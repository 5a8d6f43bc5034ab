"""The weights manifest on crafted inputs (`dfdc_core/manifest.py`, `dfdc_core/preprocessing.py`, loading in
`dfdc_core/models.py`): each bad entry, stacker or weight file refused with the message naming it and the fix, each
good one accepted, and what a model was trained to see resolved for a run.

Fast unit tests: `make mutation` runs them against mutants of these modules (see docs/testing.md).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch

from dfdc_core.aggregate import STRATEGIES, Stacker
from dfdc_core.manifest import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Manifest,
    ManifestError,
    ModelSpec,
    check_stacker,
    class_keys,
    read_stacker,
    sha256_of,
    update_manifest,
    verify_manifest,
)
from dfdc_core.models import create_classifier, load_classifier, save_fp16_state_dict
from dfdc_core.preprocessing import Preprocessing, crops_preprocessing, resolve_config
from kernel.config import load_config


@pytest.fixture()
def models(tiny_manifest_path, tmp_path) -> Path:
    """A copy of the tiny models and their manifest, to damage."""
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    return folder / "weights_manifest.json"


def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def entry_refused(manifest: Path, key: str, value, message: str) -> None:
    """The first entry with `key` = `value` (absent for `...`) is refused with `message` (after 'models[0]')."""
    def change(data):
        if value is ...:
            del data["models"][0][key]
        else:
            data["models"][0][key] = value
    original = manifest.read_text()
    edit(manifest, change)
    with pytest.raises(ManifestError) as error:
        Manifest.load(manifest)
    assert str(error.value) == f"{manifest}: models[0]{message}", key
    manifest.write_text(original)


def test_a_good_manifest_is_parsed(models):
    manifest = Manifest.load(models)
    assert isinstance(manifest, Manifest) and manifest.path == models and manifest.stacker_file is None
    assert [spec.arch for spec in manifest.models] == ["test_efficientnet", "test_resnet"]


def test_each_bad_entry_value_is_named(models):
    sha = "Ab" * 32  # upper-case hex is fine
    edit(models, lambda data: data["models"][0].update(sha256=sha))
    Manifest.load(models)
    for key in ("arch", "file", "sha256", "input_size"):
        entry_refused(models, key, ..., f" lacks ['{key}']")
    cases = [
        ("name", "", ": 'name' is ''; it must be a non-empty string"),
        ("name", 7, ": 'name' is 7; it must be a non-empty string"),
        ("file", "", ": 'file' is ''; name the weight file beside the manifest"),
        ("file", ["a.pth"], ": 'file' is ['a.pth']; name the weight file beside the manifest"),
        ("sha256", sha[:-1], f": 'sha256' is '{sha[:-1]}'; it must be the file's 64 hex digit SHA-256 "
                             "(dfdc_core.models.manifest_entry computes it)"),
        ("sha256", sha[:-1] + "g", f": 'sha256' is '{sha[:-1]}g'; it must be the file's 64 hex digit SHA-256 "
                                   "(dfdc_core.models.manifest_entry computes it)"),
        ("sha256", sha + "0", f": 'sha256' is '{sha}0'; it must be the file's 64 hex digit SHA-256 "
                              "(dfdc_core.models.manifest_entry computes it)"),
        ("input_size", 0, ": 'input_size' is 0; it must be a whole number of pixels above 0 (the size the model was "
                          "trained at)"),
        ("input_size", 64.0, ": 'input_size' is 64.0; it must be a whole number of pixels above 0 (the size the model "
                             "was trained at)"),
        ("mean", [0.5, 0.5], ": 'mean' is [0.5, 0.5]; it must be 3 numbers, one per RGB channel"),
        ("std", [0.5, "x", 0.5], ": 'std' is [0.5, 'x', 0.5]; it must be 3 numbers, one per RGB channel"),
        ("std", [0.5, 0.0, 0.5], ": 'std' is [0.5, 0.0, 0.5]; every value must be above 0 (it divides)"),
        ("std", [0.5, -1, 0.5], ": 'std' is [0.5, -1, 0.5]; every value must be above 0 (it divides)"),
        ("bytes", 0, ": 'bytes' is 0; it must be a whole number above 0"),
        ("num_classes", "3", ": 'num_classes' is '3'; it must be a whole number above 0"),
        ("crop_margin", -0.1, ": 'crop_margin' is -0.1; it must be a number >= 0 (the margin of the crops the model "
                              "was trained on, from extract_faces.py's settings.json)"),
        ("crop_margin", "0.3", ": 'crop_margin' is '0.3'; it must be a number >= 0 (the margin of the crops the "
                               "model was trained on, from extract_faces.py's settings.json)"),
        ("arch", 5, ": 'arch' is 5; it must be a timm model name"),
        ("arch", "resnet_no_such_model", ": 'arch' 'resnet_no_such_model' is not a model of timm "
                                         f"{__import__('timm').__version__}; see timm.list_models('resnet*')"),
    ]
    for key, value, message in cases:
        entry_refused(models, key, value, message)
    with pytest.raises(ManifestError, match=r"models\[0\]: model 'vit_base_patch16_224' is not in a supported family"):
        edit(models, lambda data: data["models"][0].update(arch="vit_base_patch16_224"))
        Manifest.load(models)


def test_the_manifest_shape_is_named(models):
    for text, message in [("[]", ": the top level is a JSON list; a manifest is an object "
                                 '{"models": [...], "stacker": null}'),
                          ('{"models": {}}', ": 'models' is empty or not a list; add at least one entry (name, arch, "
                                             "file, sha256, bytes, input_size, mean, std)"),
                          ('{"stacker": null}', ": 'models' is empty or not a list; add at least one entry (name, "
                                                "arch, file, sha256, bytes, input_size, mean, std)"),
                          ('{"models": []}', ": 'models' is empty or not a list; add at least one entry (name, arch, "
                                             "file, sha256, bytes, input_size, mean, std)"),
                          ('{"models": ["m.pth"]}', ": models[0] is a JSON str; each model is an object")]:
        models.write_text(text)
        with pytest.raises(ManifestError) as error:
            Manifest.load(models)
        assert str(error.value) == f"{models}{message}"


def test_a_missing_or_unreadable_manifest_is_named(tmp_path):
    fix = "pass --manifest PATH to a weights_manifest.json"
    for path in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(ManifestError) as error:
            Manifest.load(path)
        assert str(error.value) == f"{path}: manifest not found; {fix}"
    for content in (b"{", b"\xff\xfe{}"):
        (tmp_path / "m.json").write_bytes(content)
        with pytest.raises(ManifestError, match=re.escape(f"{tmp_path / 'm.json'}: manifest is not valid JSON (") +
                           f".*\\); {fix}$"):
            Manifest.load(tmp_path / "m.json")


def with_stacker(manifest: Path, stacker, groups: dict[int, str] | None = None) -> Path:
    """The manifest naming `stacker.json` (a dict as JSON, or text as is), its entries in `groups`."""
    path = manifest.parent / "stacker.json"
    path.write_text(stacker if isinstance(stacker, str) else json.dumps(stacker))

    def change(data):
        data["stacker"] = "stacker.json"
        for index, group in (groups or {}).items():
            data["models"][index]["group"] = group
    return edit(manifest, change)


def test_a_stacker_may_name_models_and_groups(models):
    with_stacker(models, {"feature_names": ["test_resnet.logit", "tiny.mean"], "coef": [1.0, -2.0], "intercept": 0.5,
                          "aggregation": "confident"}, {0: "tiny"})
    manifest = Manifest.load(models)
    assert manifest.stacker_file == models.parent / "stacker.json"
    with_stacker(models, {"feature_names": ["test_efficientnet.logit"], "coef": [1.0], "intercept": 0.0})
    Manifest.load(models)  # a name stays usable beside its group


@pytest.mark.parametrize("stacker,message", [
    ({"feature_names": ["test_resnet.logit"], "coef": [float("nan")], "intercept": 0.0},
     "stacker: coefficients or intercept are not finite (NaN or inf); refit it with python -m ensemble.stack "
     "(intercept 0.0, 1 non-finite coefficients)"),
    ({"feature_names": ["test_resnet.logit", "test_resnet.std"], "coef": [1.0, float("inf")], "intercept": 1.0},
     "stacker: coefficients or intercept are not finite (NaN or inf); refit it with python -m ensemble.stack "
     "(intercept 1.0, 1 non-finite coefficients)"),
    ({"feature_names": ["test_resnet.logit"], "coef": [1.0], "intercept": float("-inf")},
     "stacker: coefficients or intercept are not finite (NaN or inf); refit it with python -m ensemble.stack "
     "(intercept -inf, 0 non-finite coefficients)"),
    ({"feature_names": ["test_resnet.logit", "test_resnetx.logit", "test_resnet", "other.mean"], "coef": [1.0] * 4,
      "intercept": 0.0},
     "stacker: features ['test_resnetx.logit', 'test_resnet', 'other.mean'] name no model of the manifest "
     "['test_efficientnet', 'test_resnet']; fit the stacker on these models' predictions"),
    ({"feature_names": ["test_resnet.logit"], "coef": [1.0], "intercept": 0.0, "aggregation": "median"},
     f"stacker: aggregation 'median' is not one of {sorted(STRATEGIES)}"),
])
def test_a_bad_stacker_is_named(models, stacker, message):
    with_stacker(models, stacker)
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == message


def test_a_stacker_with_more_names_than_coefficients_is_refused():
    stacker = Stacker(["a.logit"], [1.0], 0.0)
    stacker.feature_names = ["a.logit", "a.std"]
    with pytest.raises(ManifestError) as error:
        check_stacker(stacker, {"a"})
    assert str(error.value) == "stacker: 2 feature names but 1 coefficients"
    check_stacker(Stacker(["a.logit"], [1.0], 0.0, aggregation=None), {"a"})


@pytest.mark.parametrize("text,message", [
    ('{"coef": [1,', r": not valid JSON \(.*\); rebuild it with python -m ensemble\.stack$"),
    (b"\xff\xfe", r": not valid JSON \(.*\); rebuild it with python -m ensemble\.stack$"),
    ('{"coef": [1.0], "intercept": 0}', r": unusable \(.*stacker\.json: stacker JSON \(or one of its variants\) lacks 'feature_names'; it needs "
                                        r"feature_names, coef, intercept\); rebuild it with python -m ensemble\.stack$"),
    ('{"feature_names": ["a.logit"], "coef": [1.0, 2.0], "intercept": 0}',
     r": unusable \(stacker has 1 feature names but 2 coefficients\); rebuild it with python -m ensemble\.stack$"),
    ("[1, 2]", r": unusable \(.*\); rebuild it with python -m ensemble\.stack$"),
])
def test_an_unreadable_stacker_is_named(tmp_path, text, message):
    path = tmp_path / "stacker.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ManifestError, match="^" + re.escape(f"stacker {path}") + message):
        read_stacker(path)


def test_a_missing_stacker_file_and_a_bad_stacker_entry_are_named(models, tmp_path):
    with pytest.raises(ManifestError, match="^" + re.escape(f"stacker {tmp_path / 'none.json'}: cannot read it (") +
                       r".*\); put it beside the manifest$"):
        read_stacker(tmp_path / "none.json")
    for value in ("", 3, ["s.json"]):
        edit(models, lambda data: data.update(stacker=value))
        with pytest.raises(ManifestError) as error:
            Manifest.load(models)
        assert str(error.value) == (f"{models}: 'stacker' is {value!r}; name the stacker JSON beside the manifest or "
                                    "set it to null")
    edit(models, lambda data: data.update(stacker="absent.json"))
    with pytest.raises(ManifestError, match="cannot read it"):
        Manifest.load(models)


def test_sha256_of_reads_the_whole_file_in_chunks(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one default chunk
    (tmp_path / "w.pth").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_of(tmp_path / "w.pth") == expected == sha256_of(tmp_path / "w.pth", chunk=7)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_of(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_load_fills_defaults_resolves_files_and_keeps_what_it_read(tmp_path):
    stacker = {"feature_names": ["w.logit", "g.mean"], "coef": [1.0, -0.5], "intercept": 0.25}
    (tmp_path / "stacker.json").write_text(json.dumps(stacker))
    path = tmp_path / "weights_manifest.json"
    path.write_text(json.dumps({"models": [
        {"arch": "test_resnet", "file": "sub/w.pth", "sha256": "AB" * 32, "input_size": 96},
        {"name": "beta", "arch": "test_resnet", "file": "b.pth", "sha256": "cd" * 32, "input_size": 64, "bytes": 10,
         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "group": "g", "num_classes": 3, "real_class": 2}],
        "stacker": "stacker.json"}))
    manifest = Manifest.load(path)
    first, second = manifest.models
    assert first == ModelSpec(name="w", arch="test_resnet", file=tmp_path / "sub" / "w.pth", sha256="ab" * 32,
                              bytes=-1, input_size=96, mean=IMAGENET_MEAN, std=IMAGENET_STD, group="w")
    assert second == ModelSpec(name="beta", arch="test_resnet", file=tmp_path / "b.pth", sha256="cd" * 32, bytes=10,
                               input_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=3,
                               classes=None, real_index=2, group="g")
    assert manifest.stacker_file == tmp_path / "stacker.json" and manifest.path == path and manifest.drop_order is None
    assert manifest.stacker.feature_names == stacker["feature_names"] and manifest.stacker.intercept == 0.25
    assert manifest.content == path.read_bytes() + (tmp_path / "stacker.json").read_bytes()  # read once, as used
    for drop_order in (["w"], []):
        path.write_text(json.dumps({"models": [{"arch": "test_resnet", "file": "w.pth", "sha256": "ab" * 32,
                                                "input_size": 8}, {"arch": "test_resnet", "file": "v.pth",
                                                                   "sha256": "cd" * 32, "input_size": 8}],
                                    "drop_order": drop_order}))
        assert Manifest.load(path).drop_order == tuple(drop_order)
    path.write_text(json.dumps({"models": [{"arch": "test_resnet", "file": "w.pth", "sha256": "ab" * 32,
                                            "input_size": 8, "group": None}], "stacker": None}))
    manifest = Manifest.load(path)
    assert manifest.stacker_file is None and manifest.stacker is None and manifest.models[0].group == "w"
    assert manifest.content == path.read_bytes()


@pytest.mark.parametrize("text,message", [
    ("{", r": manifest is not valid JSON \(.*\); pass --manifest PATH to a weights_manifest\.json$"),
    ('{"models": []}', r": 'models' is empty or not a list; add at least one entry \(name, arch, file, sha256, bytes, "
                       r"input_size, mean, std\)$"),
    ('{"models": [{"arch": "test_resnet", "file": "f", "input_size": 8}]}', r": models\[0\] lacks \['sha256'\]$"),
    ('{"models": [{"arch": "test_resnet", "file": "f", "sha256": "%s", "input_size": 8, "num_classes": 3, '
     '"classes": ["a"]}]}' % ("ab" * 32), r": models\[0\]: 'classes' has 1 names but num_classes is 3$"),
    ('{"models": [{"arch": "test_resnet", "file": "x/m.pth", "sha256": "%s", "input_size": 8}, '
     '{"arch": "test_resnet", "file": "m.pth", "sha256": "%s", "input_size": 8}]}' % ("ab" * 32, "cd" * 32),
     r": model names must be unique, got \['m', 'm'\]$"),
])
def test_load_names_the_problem(tmp_path, text, message):
    path = tmp_path / "weights_manifest.json"
    path.write_text(text)
    with pytest.raises(ManifestError, match="^" + re.escape(str(path)) + message):
        Manifest.load(path)
    with pytest.raises(ManifestError, match=r"absent.json: manifest not found; pass --manifest PATH to a "
                                            r"weights_manifest\.json$"):
        Manifest.load(tmp_path / "absent.json")


def test_class_keys_of_multi_class_entries():
    assert class_keys({"num_classes": 1, "classes": ["a"]}, "m") == {}
    assert class_keys({"num_classes": 3, "classes": ["a", "real", "b"], "real_class": "real"}, "m") == {
        "num_classes": 3, "classes": ("a", "real", "b"), "real_index": 1}
    assert class_keys({"num_classes": "2"}, "m") == {"num_classes": 2, "classes": None, "real_index": 0}
    assert class_keys({"num_classes": 4, "real_class": 3}, "m")["real_index"] == 3
    for entry, message in [
        ({"num_classes": 3, "classes": ["a", "b"]}, "m: 'classes' has 2 names but num_classes is 3"),
        ({"num_classes": 2, "classes": ["a", "b"], "real_class": "c"}, "m: real_class 'c' is not one of classes "
                                                                       "('a', 'b')"),
        ({"num_classes": 2, "real_class": "real"}, "m: real_class 'real' is not one of classes None"),
        ({"num_classes": 2, "real_class": 2}, "m: real_class 2 is not an index below num_classes 2"),
        ({"num_classes": 2, "real_class": -1}, "m: real_class -1 is not an index below num_classes 2")]:
        with pytest.raises(ManifestError) as error:
            class_keys(entry, "m")
        assert str(error.value) == message


def test_verify_manifest_checks_presence_size_and_sha256_of_every_file(models):
    manifest = Manifest.load(models)
    verify_manifest(manifest)
    second = manifest.models[1]
    data = second.file.read_bytes()
    second.file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit changed
    with pytest.raises(ManifestError) as error:
        verify_manifest(manifest)
    assert str(error.value) == (f"weight file {second.file} has sha256 {sha256_of(second.file)}, manifest {models} says "
                                f"{second.sha256}; re-copy the file or regenerate the manifest")
    second.file.write_bytes(data[:-10])
    with pytest.raises(ManifestError) as error:
        verify_manifest(manifest)
    assert str(error.value) == (f"weight file {second.file} has {len(data) - 10} bytes, manifest says {len(data)}; the "
                                "file is truncated or the manifest is stale")
    empty = Manifest((ModelSpec(**{**vars(second), "bytes": 0}),), None, models)
    with pytest.raises(ManifestError, match=f"has {len(data) - 10} bytes, manifest says 0;"):  # 0 is a size
        verify_manifest(empty)
    unsized = Manifest((ModelSpec(**{**vars(second), "bytes": -1}),), None, models)
    with pytest.raises(ManifestError, match="has sha256"):  # no size given: the sha256 still catches it
        verify_manifest(unsized)
    second.file.unlink()
    with pytest.raises(ManifestError) as error:
        verify_manifest(manifest)
    assert str(error.value) == (f"weight file {second.file} (model '{second.name}') is missing; attach it beside "
                                f"weights_manifest.json or fix 'file' in {models}")
    second.file.write_bytes(data)
    (models.parent / "stacker.json").write_text("{}")
    verify_manifest(Manifest(manifest.models, models.parent / "stacker.json", models))
    (models.parent / "stacker.json").unlink()
    with pytest.raises(ManifestError) as error:
        verify_manifest(Manifest(manifest.models, models.parent / "stacker.json", models))
    assert str(error.value) == f"stacker {models.parent / 'stacker.json'} named in {models} is missing"


def test_load_classifier_gives_an_eval_fp32_model_and_refuses_non_finite_weights(models):
    spec = Manifest.load(models).models[0]
    model = load_classifier(spec)
    assert not model.training and all(p.dtype == torch.float32 for p in model.parameters())
    state = torch.load(spec.file, weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"].float())
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key].view(-1)[0] = float("nan")
    torch.save(state, spec.file)
    with pytest.raises(ManifestError) as error:
        load_classifier(spec)
    assert str(error.value) == (f"weight file {spec.file} (model '{spec.name}') has NaN or infinite values in "
                                f"['{key}']; its training diverged or the file is damaged: re-export or retrain it")


def test_a_model_group_defaults_to_its_name():
    spec = ModelSpec("m", "test_resnet", Path("m.pth"), "0" * 64, 1, 8, IMAGENET_MEAN, IMAGENET_STD)
    assert spec.group == "m" and ModelSpec(**{**vars(spec), "group": "g"}).group == "g"


def test_the_first_five_unknown_features_are_named():
    with pytest.raises(ManifestError, match=r"^stacker: features \['x0.logit', 'x1.logit', 'x2.logit', 'x3.logit', "
                                            r"'x4.logit'\] name no model"):
        check_stacker(Stacker([f"x{i}.logit" for i in range(6)], [1.0] * 6, 0.0), {"a"})
    with pytest.raises(ManifestError, match=r"^stacker: features \['a.s0', 'a.s1', 'a.s2', 'a.s3', 'a.s4'\] are no "
                                            r"statistic the kernel computes"):
        check_stacker(Stacker([f"a.s{i}" for i in range(6)], [1.0] * 6, 0.0), {"a"})
    with pytest.raises(ManifestError, match=r"coefficients \[2000000.0, 1.0, 1.0, 1.0, 1.0\]\): scores would overflow"):
        check_stacker(Stacker([f"a.{stat}" for stat in ("logit", "mean", "std")] * 2, [2e6] + [1.0] * 5, 0.0), {"a"})


def test_a_variant_of_the_stacker_is_checked_as_the_stacker_is():
    good = Stacker(["a.logit"], [1.0], 0.0)
    check_stacker(Stacker(["a.logit", "b.logit"], [1.0, 1.0], 0.0, variants=(good,)), {"a", "b"})
    bad = Stacker(["a.logit", "zz.logit"], [1.0, float("nan")], 0.0)
    with pytest.raises(ManifestError) as error:
        check_stacker(Stacker(["a.logit", "b.logit"], [1.0, 1.0], 0.0, variants=(good, bad)), {"a", "b"})
    assert str(error.value) == ("stacker: coefficients or intercept are not finite (NaN or inf); refit it with python "
                                "-m ensemble.stack (intercept 0.0, 1 non-finite coefficients) (in its variant for "
                                "groups ['a', 'zz'])")


@pytest.mark.parametrize("drop_order,message", [
    ("test_resnet", "is 'test_resnet'; it must be a list of model names, most expendable first"),
    (["test_resnet", 3], "is ['test_resnet', 3]; it must be a list of model names, most expendable first"),
    (["test_resnet", "nope", "gone"], "names ['gone', 'nope'], which are not models of the manifest "
                                      "['test_efficientnet', 'test_resnet']"),
    (["test_resnet", "test_resnet"], "names a model twice: ['test_resnet', 'test_resnet']"),
    (["test_resnet", "test_efficientnet"], "names every model; leave out at least one, which the kernel always keeps"),
])
def test_a_bad_drop_order_is_named(models, drop_order, message):
    edit(models, lambda data: data.update(drop_order=drop_order))
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == f"{models}: 'drop_order' {message}"


def test_a_drop_order_of_some_models_passes(models):
    edit(models, lambda data: data.update(drop_order=["test_resnet"]))
    Manifest.load(models)
    edit(models, lambda data: data.update(drop_order=[]))
    Manifest.load(models)


def test_the_crop_margin_models_were_trained_with_is_the_manifests_when_they_agree(models):
    assert Manifest.load(models).crop_margin is None  # not recorded: the kernel config's margin is used
    edit(models, lambda data: [entry.update(crop_margin=0.125) for entry in data["models"]])
    manifest = Manifest.load(models)
    assert manifest.crop_margin == 0.125 and {spec.crop_margin for spec in manifest.models} == {0.125}
    for other in (0.3, None):
        edit(models, lambda data: data["models"][1].update(crop_margin=other))
        with pytest.raises(ManifestError) as error:
            Manifest.load(models)
        assert str(error.value) == (
            f"{models}: its models were trained on crops of different margins ({{'test_efficientnet': 0.125, "
            f"'test_resnet': {other}}}; None: not recorded), but the kernel cuts one crop per face for all of them; "
            "keep models of one crop_margin in a manifest, or retrain on crops of one margin")


RECORDED = Preprocessing.of_config(load_config(crop_margin=0.2, still_pad=0.5), frames=8)


def test_a_recorded_preprocessing_is_read_into_each_spec_and_its_geometry_into_the_manifest(models):
    edit(models, lambda data: [entry.update(preprocessing=RECORDED.as_dict()) for entry in data["models"]])
    manifest = Manifest.load(models)
    assert {spec.preprocessing for spec in manifest.models} == {RECORDED}
    assert (manifest.crop_margin, manifest.still_pad) == (0.2, 0.5)
    assert {(spec.crop_margin, spec.still_pad) for spec in manifest.models} == {(0.2, 0.5)}
    edit(models, lambda data: data["models"][0].update(crop_margin=0.2))  # the same margin twice is no conflict
    Manifest.load(models)
    edit(models, lambda data: data["models"][0].update(crop_margin=0.3))
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == (f"{models}: models[0]: 'crop_margin' 0.3 differs from its preprocessing's 0.2; keep "
                                "the one the model was trained with")
    edit(models, lambda data: [data["models"][0].pop("crop_margin"),
                               data["models"][1].update(preprocessing=dict(RECORDED.as_dict(), still_pad=0.4))])
    with pytest.raises(ManifestError, match="^" + re.escape(f"{models}: its models were trained on crops of different "
                                                            "still paddings ({'test_efficientnet': 0.5, 'test_resnet'"
                                                            ": 0.4}; None: not recorded)")):
        Manifest.load(models)


@pytest.mark.parametrize("change,problem", [
    (lambda p: [1, 2], "it is a JSON list, not an object"),
    (lambda p: {k: v for k, v in p.items() if k != "frames"}, "its keys are "),
    (lambda p: dict(p, frames=0), "'frames' is 0; it must be a whole number above 0"),
    (lambda p: dict(p, detect_long_side=480.0), "'detect_long_side' is 480.0; it must be a whole number above 0"),
    (lambda p: dict(p, mtcnn_min_face_size=True), "'mtcnn_min_face_size' is True; it must be a whole number above 0"),
    (lambda p: dict(p, mtcnn_thresholds=[0.7, 0.8]), "'mtcnn_thresholds' is [0.7, 0.8]; it must be 3 numbers from 0 "
                                                     "to 1"),
    (lambda p: dict(p, mtcnn_thresholds=[0.7, 0.8, 1.5]), "'mtcnn_thresholds' is [0.7, 0.8, 1.5]; it must be 3 "
                                                          "numbers from 0 to 1"),
    (lambda p: dict(p, min_face_score=1.01), "'min_face_score' is 1.01; it must be a number from 0 to 1"),
    (lambda p: dict(p, min_face_score=-0.01), "'min_face_score' is -0.01; it must be a number from 0 to 1"),
    (lambda p: dict(p, min_face_px=-1), "'min_face_px' is -1; it must be a number of 0 or more"),
    (lambda p: dict(p, crop_margin=float("nan")), "'crop_margin' is nan; it must be a number of 0 or more"),
    (lambda p: dict(p, still_pad=-0.1), "'still_pad' is -0.1; it must be a number of 0 or more"),
    (lambda p: dict(p, crop_margin=2.01), "'crop_margin' is 2.01; it must be at most 2.0"),
    (lambda p: dict(p, still_pad=2.5), "'still_pad' is 2.5; it must be at most 2.0"),
])
def test_a_bad_recorded_preprocessing_is_refused_naming_the_field(models, change, problem):
    edit(models, lambda data: data["models"][0].update(preprocessing=change(RECORDED.as_dict())))
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value).startswith(f"{models}: models[0]: 'preprocessing' is unusable: {problem}")
    assert str(error.value).endswith("(training records it from the crops' settings.json; re-export the model or "
                                     "drop the key)")


def test_the_edge_values_of_a_recorded_preprocessing_pass(models):
    edges = dict(RECORDED.as_dict(), frames=1, detect_long_side=1, mtcnn_min_face_size=1, mtcnn_thresholds=[0, 1, 1],
                 min_face_score=0, min_face_px=0, crop_margin=2.0, still_pad=0)
    edit(models, lambda data: [entry.update(preprocessing=edges) for entry in data["models"]])
    manifest = Manifest.load(models)
    assert manifest.models[0].preprocessing.mtcnn_thresholds == (0.0, 1.0, 1.0) and manifest.crop_margin == 2.0
    edit(models, lambda data: [entry.update(preprocessing=dict(edges, min_face_score=1, still_pad=2.0))
                               for entry in data["models"]])
    assert Manifest.load(models).still_pad == 2.0


def test_a_run_cuts_crops_with_the_trained_geometry_and_logs_other_differences(caplog):
    caplog.set_level(logging.INFO, logger="kernel")
    config = load_config()
    same = Preprocessing.of_config(config)
    assert resolve_config(config, {"crop_margin": None, "still_pad": None}, {"m": same}, "w.json") == config
    assert not caplog.records
    resolved = resolve_config(config, {"crop_margin": 0.2, "still_pad": 0.5}, {"m": RECORDED}, "w.json")
    assert resolved == dict(config, crop_margin=0.2, still_pad=0.5) and config == load_config()  # not changed
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["w.json: crop_margin 0.2, as its models were trained (the config says 0.3)",
                        "w.json: still_pad 0.5, as its models were trained (the config says 0.4)",
                        "w.json: model m was trained on crops made with frames 8; this run uses frames 32"]
    caplog.clear()
    resolve_config(dict(config, detect_long_side=640), {}, {"m": RECORDED}, "w.json")
    assert [record.getMessage() for record in caplog.records] == [
        "w.json: model m was trained on crops made with frames 8, detect_long_side 480, crop_margin 0.2, still_pad "
        "0.5; this run uses frames 32, detect_long_side 640, crop_margin 0.3, still_pad 0.4"]
    assert resolve_config(config, {"crop_margin": 0.3, "still_pad": None}, {}, "w.json") == config


def test_crops_record_their_preprocessing_and_older_caches_are_read_from_their_config():
    recorded = {"frames": 8, "preprocessing": RECORDED.as_dict(), "config": load_config()}
    assert crops_preprocessing(recorded) == RECORDED
    older = {"frames": 8, "config": load_config(crop_margin=0.2, still_pad=0.5)}
    assert crops_preprocessing(older) == RECORDED
    assert crops_preprocessing({"config": load_config()}) == Preprocessing.of_config(load_config())


def test_update_manifest_keeps_the_other_keys_and_refuses_to_mix_crop_margins(models):
    edit(models, lambda data: [entry.update(crop_margin=0.3) for entry in data["models"]])
    edit(models, lambda data: data.update(drop_order=["test_resnet"]))
    entry = dict(json.loads(models.read_text())["models"][0], name="another", crop_margin=0.3)
    update_manifest(models, [entry], stacker="stacker.json")
    data = json.loads(models.read_text())
    assert data["drop_order"] == ["test_resnet"] and data["stacker"] == "stacker.json"
    assert [m["name"] for m in data["models"]] == ["test_efficientnet", "test_resnet", "another"]
    before = models.read_text()
    with pytest.raises(ManifestError, match=re.escape(
            f"{models}: adding ['another'] would mix models trained on crops of (crop_margin, still_pad) "
            "[(0.125, None), (0.3, None)] (None: not recorded); the kernel cuts one crop per face, so write them to "
            "another manifest (`manifest:` in the training config)")):
        update_manifest(models, [dict(entry, crop_margin=0.125)])
    assert models.read_text() == before  # nothing written


def test_load_classifier_builds_the_entrys_class_count_and_names_a_mismatch(models, tmp_path):
    spec = Manifest.load(models).models[0]
    weights = tmp_path / "five.pth"
    save_fp16_state_dict(create_classifier(spec.arch, num_classes=5), weights)
    five = ModelSpec(**{**vars(spec), "file": weights, "num_classes": 5, "classes": None, "real_index": 4})
    assert load_classifier(five).get_classifier().out_features == 5
    with pytest.raises(ManifestError, match=rf"^weight file {re.escape(str(weights))} does not fit arch "
                                            rf"'{spec.arch}': Error\(s\) in loading state_dict"):
        load_classifier(ModelSpec(**{**vars(five), "num_classes": 1}))


def test_load_classifier_moves_the_model_to_its_device_in_fp16_on_cuda(models, monkeypatch):
    """Without a GPU here: `Module.to` is recorded instead of moving, so the dtype and device asked can be seen (the
    factory's `to(memory_format=...)` names no device)."""
    spec = Manifest.load(models).models[0]
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda module, *device, **layout: moved.extend(device) or module)
    assert {p.dtype for p in load_classifier(spec, "cuda:1").parameters()} == {torch.float16}
    assert {p.dtype for p in load_classifier(spec, "cpu").parameters()} == {torch.float32}
    assert moved == ["cuda:1", "cpu"]


def test_load_classifier_runs_no_code_from_a_pickle(models, tmp_path):
    spec = Manifest.load(models).models[0]
    weights = tmp_path / "evil.pth"
    torch.save({"conv_stem.weight": Payload(tmp_path / "ran")}, weights)
    with pytest.raises(ManifestError, match="holding objects other than tensors and plain values .*refused unread"):
        load_classifier(ModelSpec(**{**vars(spec), "file": weights}))
    assert not (tmp_path / "ran").exists()


class Payload:
    """Pickled, it would create the file `path` when loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_the_first_five_non_finite_tensors_are_named(models):
    spec = Manifest.load(models).models[0]
    state = torch.load(spec.file, weights_only=True)
    floating = [key for key, value in state.items() if value.is_floating_point()][:6]
    for key in floating:
        state[key].view(-1)[0] = float("nan")
    torch.save(state, spec.file)
    with pytest.raises(ManifestError) as error:
        load_classifier(spec)
    assert f"has NaN or infinite values in {floating[:5]}; its training" in str(error.value)


def test_manifest_values_of_the_wrong_type_or_range_are_named(models):
    cases = [
        ("input_size", 1025, ": 'input_size' is 1025; it must be at most 1024 pixels (a batch of larger inputs "
                             "exhausts memory)"),
        ("input_size", 100000, ": 'input_size' is 100000; it must be at most 1024 pixels (a batch of larger inputs "
                               "exhausts memory)"),
        ("std", [0.2, 1e-320, 0.2], ": 'std' is [0.2, 1e-320, 0.2]; every value must be at least 0.001 (pixels are "
                                    "scaled to [0, 1]; a smaller std makes the model's inputs overflow)"),
        ("std", [0.2, 0.2, 0.00099], ": 'std' is [0.2, 0.2, 0.00099]; every value must be at least 0.001 (pixels are "
                                     "scaled to [0, 1]; a smaller std makes the model's inputs overflow)"),
        ("mean", [0.5, 1e308, 0.5], ": 'mean' is [0.5, 1e+308, 0.5]; every value must be from 0 to 1 (pixels are "
                                    "scaled to [0, 1] before the mean is taken off)"),
        ("mean", [-0.01, 0.5, 0.5], ": 'mean' is [-0.01, 0.5, 0.5]; every value must be from 0 to 1 (pixels are "
                                    "scaled to [0, 1] before the mean is taken off)"),
        ("mean", [0.5, 0.5, 1.01], ": 'mean' is [0.5, 0.5, 1.01]; every value must be from 0 to 1 (pixels are "
                                   "scaled to [0, 1] before the mean is taken off)"),
        ("crop_margin", 2.5, ": 'crop_margin' is 2.5; it must be at most 2.0 (a crop 5 faces wide)"),
        ("group", 5, ": 'group' is 5; it must be a non-empty string (the model group its folds share) or null"),
        ("group", "", ": 'group' is ''; it must be a non-empty string (the model group its folds share) or null"),
        ("group", ["a"], ": 'group' is ['a']; it must be a non-empty string (the model group its folds share) or "
                         "null"),
        ("num_classes", 1001, ": 'num_classes' is 1001; it must be at most 1000"),
        ("classes", 5, ": 'classes' is 5; it must be a list of distinct class names, one per output of the model"),
        ("classes", "real", ": 'classes' is 'real'; it must be a list of distinct class names, one per output of the "
                            "model"),
        ("classes", [0, 1], ": 'classes' is [0, 1]; it must be a list of distinct class names, one per output of the "
                            "model"),
        ("classes", ["a", "a"], ": 'classes' is ['a', 'a']; it must be a list of distinct class names, one per output "
                                "of the model"),
        ("classes", ["a", ""], ": 'classes' is ['a', '']; it must be a list of distinct class names, one per output "
                               "of the model"),
    ]
    for key, value, message in cases:
        entry_refused(models, key, value, message)
    for value in (None, True, 1.0, [0]):
        entry_refused(models, "real_class", value, f": 'real_class' is {value!r}; it must be the name (in 'classes') "
                                                   "or the index of the output that means real")


def test_the_flip_tta_of_each_models_oof_scores_is_read_and_a_bad_one_named(models):
    edit(models, lambda data: [entry.update(tta_hflip=value) for entry, value in zip(data["models"], (True, False))])
    assert [spec.tta_hflip for spec in Manifest.load(models).models] == [True, False]
    edit(models, lambda data: data["models"][0].update(tta_hflip=None))
    assert Manifest.load(models).models[0].tta_hflip is None
    edit(models, lambda data: data["models"][0].pop("tta_hflip"))
    assert Manifest.load(models).models[0].tta_hflip is None  # not recorded: the kernel config decides
    for value in (1, 0, "true", [True]):
        entry_refused(models, "tta_hflip", value, f": 'tta_hflip' is {value!r}; it must be true or false (whether "
                                                  "the model's OOF scores averaged each crop with its mirror image) "
                                                  "or null")


def test_manifest_values_at_their_bounds_pass(models):
    edit(models, lambda data: data["models"][0].update(input_size=1024, mean=[0, 0.5, 1], std=[0.001, 1, 5],
                                                       group=None, classes=None, real_class=0))
    edit(models, lambda data: [entry.update(crop_margin=2.0) for entry in data["models"]])
    Manifest.load(models)
    edit(models, lambda data: [entry.update(crop_margin=0) for entry in data["models"]])
    assert Manifest.load(models).crop_margin == 0.0
    edit(models, lambda data: data["models"][0].update(num_classes=1000, classes=[str(i) for i in range(1000)],
                                                       real_class="999"))
    assert Manifest.load(models).models[0].real_index == 999


STACKER = {"feature_names": ["test_resnet.logit"], "coef": [1.0], "intercept": 0.0}


@pytest.mark.parametrize("change,message", [
    ({"feature_names": [5]}, "'feature_names' is [5]; it must be a non-empty list of feature names '<model or "
                             "group>.<statistic>' (with none, every video gets one score)"),
    ({"feature_names": [], "coef": []}, "'feature_names' is []; it must be a non-empty list of feature names '<model "
                                        "or group>.<statistic>' (with none, every video gets one score)"),
    ({"feature_names": "test_resnet.logit", "coef": [1.0] * 17},
     "'feature_names' is 'test_resnet.logit'; it must be a non-empty list of feature names '<model or "
     "group>.<statistic>' (with none, every video gets one score)"),
    ({"coef": [[1.0]]}, "'coef' is [[1.0]]; it must be a list of numbers, one per feature"),
    ({"coef": ["1"]}, "'coef' is ['1']; it must be a list of numbers, one per feature"),
    ({"coef": [True]}, "'coef' is [True]; it must be a list of numbers, one per feature"),
    ({"coef": "1"}, "'coef' is '1'; it must be a list of numbers, one per feature"),
    ({"intercept": "0.5"}, "'intercept' is '0.5'; it must be a number"),
    ({"intercept": True}, "'intercept' is True; it must be a number"),
])
def test_stacker_values_of_the_wrong_type_are_named(models, change, message):
    with_stacker(models, {**STACKER, **change})
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == f"stacker {models.parent / 'stacker.json'}: {message}"


def test_a_variants_values_are_checked_too(models):
    variant = {"groups": ["test_resnet"], **STACKER, "intercept": "0.5"}  # float() would take it
    with_stacker(models, {**STACKER, "variants": [dict(STACKER, groups=["test_resnet"]), variant]})
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == (f"stacker {models.parent / 'stacker.json'}: variants[1]: 'intercept' is '0.5'; it must "
                                "be a number")


@pytest.mark.parametrize("change,message", [
    ({"aggregation": ["mean"]}, f"stacker: aggregation ['mean'] is not one of {sorted(STRATEGIES)}"),
    ({"aggregation": {"mean": 1}}, f"stacker: aggregation {{'mean': 1}} is not one of {sorted(STRATEGIES)}"),
    ({"feature_names": ["test_resnet.median", "test_resnet.logit", "test_resnet.share_above_0.9"], "coef": [1.0] * 3},
     "stacker: features ['test_resnet.median', 'test_resnet.share_above_0.9'] are no statistic the kernel computes "
     "(['logit', 'mean', 'std', 'share_above_0.8', 'share_below_0.2']); fit the stacker with python -m "
     "ensemble.stack --features"),
    ({"coef": [1.0000001e6]}, "stacker: a coefficient or the intercept is beyond ±1e+06 (intercept 0.0, coefficients "
                              "[1000000.1]): scores would overflow; refit it with python -m ensemble.stack"),
    ({"intercept": -1e300}, "stacker: a coefficient or the intercept is beyond ±1e+06 (intercept -1e+300, "
                            "coefficients [1.0]): scores would overflow; refit it with python -m ensemble.stack"),
])
def test_stacker_values_of_the_wrong_range_are_named(models, change, message):
    with_stacker(models, {**STACKER, **change})
    with pytest.raises(ManifestError) as error:
        Manifest.load(models)
    assert str(error.value) == message


def test_every_statistic_and_the_largest_coefficients_pass(models):
    names = [f"test_resnet.{stat}" for stat in ("logit", "mean", "std", "share_above_0.8", "share_below_0.2")]
    with_stacker(models, {"feature_names": names, "coef": [1e6, -1e6, 0, 1, 2], "intercept": -1e6})
    Manifest.load(models)


def test_a_manifest_name_too_long_to_open_is_named(tmp_path):
    path = tmp_path / ("m" * 300 + ".json")
    with pytest.raises(ManifestError) as error:
        Manifest.load(path)
    assert str(error.value) == (f"{path}: cannot read the manifest (File name too long); pass --manifest PATH to a "
                                "weights_manifest.json")


def png_bytes() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()


def whole_model(path: Path) -> None:
    torch.save(create_classifier("test_efficientnet"), path)


@pytest.mark.parametrize("make,holds", [
    (whole_model, " is a zip archive (torch.save's format) holding objects other than tensors and plain values (a "
                  "whole pickled model?), refused unread (UnpicklingError: Unsupported global: GLOBAL "
                  "timm.models.efficientnet.EfficientNet was not an allowed global by default)"),
    (lambda path: path.write_text("conv_stem.weight: 0.1\n"), " is a text file that torch.load cannot read "
                                                               "(UnpicklingError: Unsupported global: GLOBAL "),
    (lambda path: path.write_text("hello"), " is a text file that torch.load cannot read (KeyError: 101)"),
    (lambda path: path.write_bytes(png_bytes()), " is a PNG image that torch.load cannot read (UnpicklingError: "
                                                 "Unsupported operand "),
    (lambda path: path.write_bytes(b""), " is an empty file that torch.load cannot read (EOFError)"),
    (lambda path: path.write_bytes(b"\x00\x01\x02" * 30), " is data of another format that torch.load cannot read "),
    (lambda path: torch.save([torch.ones(2)], path), " holds a list, not a state_dict (names of tensors)"),
    (lambda path: torch.save(torch.ones(2), path), " holds a Tensor, not a state_dict (names of tensors)"),
    (lambda path: torch.save({"model": {"w": torch.ones(1)}, "epoch": 3}, path),
     " holds a dict whose entry 'model' is a dict, not a tensor, not a state_dict (names of tensors)"),
    (lambda path: torch.save({0: torch.ones(1)}, path), " holds a dict whose entry 0 is a Tensor, not a tensor, not a "
                                                        "state_dict (names of tensors)"),
])
def test_a_weight_file_that_is_no_state_dict_is_named_with_what_it_holds(models, tmp_path, make, holds):
    """Issue 33: such files passed the sha256 check and then ended in UnpicklingError/TypeError tracebacks."""
    spec = Manifest.load(models).models[0]
    weights = tmp_path / "weights.pth"
    make(weights)
    with pytest.raises(ManifestError) as error:
        load_classifier(ModelSpec(**{**vars(spec), "file": weights}))
    assert str(error.value).startswith(f"weight file {weights} (model 'test_efficientnet'){holds}")
    assert str(error.value).endswith("; export the model's weights with dfdc_core.models.save_fp16_state_dict (as "
                                     "training does)")


def test_a_truncated_weight_file_is_named(models, tmp_path):
    spec = Manifest.load(models).models[0]
    weights = tmp_path / "weights.pth"
    weights.write_bytes(spec.file.read_bytes()[:spec.file.stat().st_size // 2])
    with pytest.raises(ManifestError) as error:
        load_classifier(ModelSpec(**{**vars(spec), "file": weights}))
    assert str(error.value) == (f"weight file {weights} (model 'test_efficientnet') is a zip archive (torch.save's "
                                "format) that torch.load cannot read (RuntimeError: PytorchStreamReader failed reading "
                                "zip archive: failed finding central directory); export the model's weights with "
                                "dfdc_core.models.save_fp16_state_dict (as training does)")


def test_inputs_that_are_no_regular_file_are_refused_without_blocking(models, tmp_path):
    from tests.helpers import pipe_that_unblocks

    pipe = pipe_that_unblocks(tmp_path / "pipe.json")
    for path in (pipe, Path("/dev/zero")):
        with pytest.raises(ManifestError) as error:
            Manifest.load(path)
        assert str(error.value) == (f"{path}: cannot read the manifest (not a regular file (a device or a pipe)); "
                                    "pass --manifest PATH to a weights_manifest.json")
        with pytest.raises(ManifestError, match=re.escape(f"stacker {path}: cannot read it (") + ".*not a regular"):
            read_stacker(path)
