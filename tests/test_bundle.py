import json
import re
import shutil
import zipfile

import pytest

from dfdc_core.manifest import Manifest, ManifestError, verify_manifest
from ensemble.bundle import (
    KAGGLE_LIMIT_BYTES,
    KAGGLE_PLATFORMS,
    BundleError,
    build_bundle,
    kaggle_download_command,
    main,
    top_level_files,
    wheel_requirement,
)
from kernel.kaggle import BUNDLE_MARKER
from tests.helpers import registry_unreachable


@pytest.fixture()
def models(tiny_manifest_path, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    (folder / "stacker.json").write_text(json.dumps({"feature_names": ["test_resnet.logit"], "coef": [1.0],
                                                     "intercept": 0.0}))
    data = json.loads((folder / "weights_manifest.json").read_text())
    data["stacker"] = "stacker.json"
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    return folder / "weights_manifest.json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> None:
    """Skip, saying why, where the package registry (the wheels for Kaggle's platform) cannot be reached."""
    if why := registry_unreachable(tmp_path_factory.mktemp("registry_probe")):
        pytest.skip(why)


@pytest.mark.slow
def test_bundle_is_flat_with_weights_stacker_pinned_wheels_and_notebook(registry, models, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["--manifest", str(models), "--out", str(out), "--dataset-id", "me/dfdc-test"]) == 0
    assert all(path.is_file() for path in out.iterdir())  # kaggle datasets create skips folders by default
    manifest = Manifest.load(out / "weights_manifest.json")
    verify_manifest(manifest)
    assert all(spec.file.parent == out for spec in manifest.models) and manifest.stacker_file == out / "stacker.json"
    wheels = sorted(p.name.split("-")[0] for p in out.glob("*.whl"))
    assert sorted(set(wheels)) == ["av", "decord", "dfdc_kit", "facenet_pytorch"]
    assert not [p.name for p in out.glob("*.whl") if "macosx" in p.name or "aarch64" in p.name or "win" in p.name]
    marker = json.loads((out / BUNDLE_MARKER).read_text())
    assert marker["requirements"] == ["av==18.1.0", "decord==0.6.0", "dfdc-kit==0.1.0", "facenet-pytorch==2.6.0"]
    assert sorted(marker["wheels"]) == sorted(p.name for p in out.glob("*.whl"))
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "me/dfdc-test"
    notebook = (out / "kernel_notebook.py").read_text()
    assert "--no-index" in notebook and "--no-deps" in notebook and "def find_bundle" in notebook
    compile(notebook, "kernel_notebook.py", "exec")
    assert "def write_atomic" in notebook and "import dfdc_core" not in notebook and "from dfdc_core" not in notebook
    kit_wheel = next(out.glob("dfdc_kit-*.whl"))
    packages = {name.split("/")[0] for name in zipfile.ZipFile(kit_wheel).namelist() if "/" in name}
    assert {p for p in packages if not p.endswith(".dist-info")} == {"dfdc_core", "kernel"}
    modules = set(zipfile.ZipFile(kit_wheel).namelist())
    assert {"kernel/cli.py", "kernel/pipeline.py", "dfdc_core/video.py"} <= modules
    assert not modules & {"kernel/selftest.py", "dfdc_core/synthetic.py"}  # test support stays out of the wheel
    printed = capsys.readouterr().out
    assert "MB of 1000 MB" in printed and f"kaggle datasets create -p {out}" in printed


def test_wheels_are_asked_for_kaggles_platform_whatever_builds_the_bundle(tmp_path):
    command = kaggle_download_command("3.12", tmp_path, ("av==18.1.0",))
    flags = list(zip(command, command[1:]))
    assert ("--python-version", "3.12") in flags and ("--abi", "cp312") in flags and ("--implementation", "cp") in flags
    assert "--only-binary=:all:" in command and "--no-deps" in command
    assert {value for flag, value in flags if flag == "--platform"} == set(KAGGLE_PLATFORMS)
    assert all(platform.endswith("x86_64") and platform.startswith("manylinux") for platform in KAGGLE_PLATFORMS)
    assert wheel_requirement(tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl") == "facenet-pytorch==2.6.0"


def test_a_folder_in_the_bundle_is_refused(models, tmp_path, monkeypatch):
    import ensemble.bundle as bundle

    def wheels_in_a_folder(folder, extra):
        (folder / "wheels").mkdir()
        return []

    monkeypatch.setattr(bundle, "build_wheels", wheels_in_a_folder)
    with pytest.raises(BundleError, match=r"\['wheels'\], which kaggle datasets create \(--dir-mode skip\)"):
        build_bundle(models, tmp_path / "bundle")
    assert "wheels" not in [p.name for p in top_level_files(tmp_path / "bundle")]


def test_bundle_over_the_limit_is_refused_naming_the_largest_file(models, tmp_path):
    data = json.loads(models.read_text())
    huge = models.parent / "huge.pth"
    with open(huge, "wb") as handle:  # sparse: no disk used, never hashed because the size check comes first
        handle.truncate(KAGGLE_LIMIT_BYTES + 1)
    data["models"].append(dict(data["models"][0], name="huge", file="huge.pth", bytes=KAGGLE_LIMIT_BYTES + 1))
    models.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"over the 1.000 GB Kaggle limit; largest files: huge.pth 1000.0 MB"):
        build_bundle(models, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_the_finished_bundle_is_measured_again_with_its_wheels(models, tmp_path, monkeypatch):
    import ensemble.bundle as bundle

    weights = sum(path.stat().st_size for path in models.parent.glob("*.pth"))
    limit = weights + 2_000_000  # the weights pass the first check

    def big_wheel(folder, extra):
        with open(folder / "big-1.0-py3-none-any.whl", "wb") as handle:  # sparse: no disk used
            handle.truncate(limit)
        return sorted(folder.glob("*.whl"))

    monkeypatch.setattr(bundle, "build_wheels", big_wheel)
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match=rf"^bundle {out} holds .* GB, over the .* GB Kaggle limit; largest files: "
                                          rf"big-1.0-py3-none-any.whl {limit / 1e6:.1f} MB; "):
        build_bundle(models, out, limit=limit)
    assert build_bundle(models, tmp_path / "fits", limit=3 * limit) > limit


def test_weight_with_another_sha256_is_refused(models, tmp_path, capsys):
    data = json.loads(models.read_text())
    weights = models.parent / data["models"][1]["file"]
    content = bytearray(weights.read_bytes())
    content[-1] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(content))
    with pytest.raises(ManifestError, match=f"{weights.name} has sha256"):
        build_bundle(models, tmp_path / "bundle")
    assert main(["--manifest", str(models), "--out", str(tmp_path / "b2")]) == 2
    assert "sha256" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ issue 33: bad input

def edited(models, change):
    data = json.loads(models.read_text())
    change(data)
    models.write_text(json.dumps(data))
    return models


def nothing_written(tmp_path, out) -> bool:
    """Neither `out` nor any file outside the models folder exists (the test's own files aside)."""
    return not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["models"]


@pytest.mark.parametrize("name,suffix", [("../evil", ".pth"), ("sub/evil", ".pth"), ("/tmp/evil", ".pth"),
                                         ("..", ""), (".", "")])
def test_a_model_name_that_is_no_plain_file_name_is_refused_before_anything_is_written(models, tmp_path, name,
                                                                                       suffix):
    """Issue 33: '../evil' copied a weight outside --out and exited 0 (so would '..' for weights with no suffix)."""
    data = json.loads(models.read_text())
    shutil.copy(models.parent / data["models"][0]["file"], models.parent / f"weights{suffix}")
    edited(models, lambda data: data["models"][0].update(name=name, file=f"weights{suffix}"))
    edited(models, lambda data: data.update(stacker=None))
    out = tmp_path / "bundle"
    with pytest.raises(BundleError) as error:
        build_bundle(models, out, wheels=False)
    assert str(error.value) == (f"{models}: model name {name!r} makes {name + suffix!r}, which is no plain file name, "
                                "the name of its weights in the bundle; rename the model (letters, digits, '_', '-', "
                                "'.'), in the manifest and in the stacker's features")
    assert nothing_written(tmp_path, out) and not (tmp_path / "evil.pth").exists()


def test_dots_in_a_model_name_are_fine(models, tmp_path):
    edited(models, lambda data: data["models"][0].update(name=".."))  # its weights: '...pth'
    edited(models, lambda data: data.update(stacker=None))
    build_bundle(models, tmp_path / "bundle", wheels=False)
    assert (tmp_path / "bundle" / "...pth").is_file()


def test_names_the_bundle_would_hold_twice_are_refused(models, tmp_path):
    data = json.loads(models.read_text())
    (models.parent / "test_resnet.pth").write_bytes((models.parent / data["models"][1]["file"]).read_bytes())
    shutil.copy(models.parent / "stacker.json", models.parent / "sub_stacker.json")
    (models.parent / "nested").mkdir()
    shutil.copy(models.parent / "stacker.json", models.parent / "nested" / "test_resnet.pth")
    edited(models, lambda data: data.update(stacker="nested/test_resnet.pth"))
    with pytest.raises(BundleError, match=re.escape("the bundle would hold ['test_resnet.pth'] twice")):
        build_bundle(models, tmp_path / "bundle", wheels=False)
    weights = models.parent / data["models"][0]["file"]
    shutil.copy(weights, models.parent / "m.json")
    edited(models, lambda data: data.update(stacker=None))
    edited(models, lambda data: data["models"][0].update(name="weights_manifest", file="m.json"))
    with pytest.raises(BundleError, match=re.escape("the bundle would hold ['weights_manifest.json'] twice")):
        build_bundle(models, tmp_path / "bundle", wheels=False)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("change,message", [
    (lambda models: models.write_text("[]"), "the top level is a JSON list"),
    (lambda models: edited(models, lambda data: data["models"][0].update(arch="resnet_no_such_model")),
     "is not a model of timm"),
    (lambda models: edited(models, lambda data: data["models"][0].update(input_size=100000)), "at most 1024 pixels"),
    (lambda models: (models.parent / "stacker.json").write_text('{"feature_names": ["x.logit"], "coef": [1], '
                                                                 '"intercept": 0}'), "name no model of the manifest"),
    (lambda models: text_weights(models), "is a text file that torch.load cannot read"),
])
def test_what_the_kernel_would_refuse_is_refused_before_anything_is_written(models, tmp_path, capsys, change,
                                                                            message):
    """Issue 33: a text weight or an unknown arch was bundled with exit 0 (and `[]` traced back)."""
    change(models)
    out = tmp_path / "bundle"
    assert main(["--manifest", str(models), "--out", str(out), "--no-wheels"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert nothing_written(tmp_path, out)


def text_weights(models) -> None:
    """The first model's weights replaced by text, with the manifest's sha256 and size matching it."""
    from dfdc_core.manifest import manifest_entry

    data = json.loads(models.read_text())
    entry = data["models"][0]
    (models.parent / entry["file"]).write_text("weights\n")
    data["models"][0] = {**entry, **manifest_entry(entry["name"], entry["arch"], models.parent / entry["file"],
                                                   models.parent, entry["input_size"])}
    models.write_text(json.dumps(data))


def test_an_out_that_is_a_file_or_under_one_is_refused(models, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep me")
    for out, message in [(tmp_path / "a_file", f"--out {tmp_path / 'a_file'} is a file; pass a new folder"),
                         (tmp_path / "a_file" / "bundle", f"--out {tmp_path / 'a_file' / 'bundle'}: cannot write in ")]:
        assert main(["--manifest", str(models), "--out", str(out), "--no-wheels"]) == 2
        assert capsys.readouterr().err.startswith(f"error: {message}")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_failed_write_is_named_not_a_traceback(models, tmp_path, monkeypatch):
    import errno
    import os

    import ensemble.bundle as bundle

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(bundle.shutil, "copy2", full)
    out = tmp_path / "bundle"
    with pytest.raises(BundleError) as error:
        build_bundle(models, out, wheels=False)
    assert str(error.value) == (f"--out {out}: writing the bundle failed ([Errno 28] No space left on device); free "
                                "space there and build it again into a new folder")


def test_a_bundle_of_checked_models_keeps_names_and_content(models, tmp_path):
    build_bundle(models, tmp_path / "bundle", wheels=False)
    data = json.loads((tmp_path / "bundle" / "weights_manifest.json").read_text())
    assert [entry["file"] for entry in data["models"]] == ["test_efficientnet.pth", "test_resnet.pth"]
    assert data["stacker"] == "stacker.json"
    verify_manifest(Manifest.load(tmp_path / "bundle" / "weights_manifest.json"))
