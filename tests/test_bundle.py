import json
import shutil
import zipfile

import pytest

from dfdc_core.models import ManifestError, load_manifest, verify_manifest
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
    (folder / "stacker.json").write_text(json.dumps({"feature_names": [], "coef": [], "intercept": 0.0}))
    data = json.loads((folder / "weights_manifest.json").read_text())
    data["stacker"] = "stacker.json"
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    return folder / "weights_manifest.json"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> None:
    """Skip, saying why, where the package registry (the wheels for Kaggle's platform) cannot be reached."""
    if why := registry_unreachable(tmp_path_factory.mktemp("registry_probe")):
        pytest.skip(why)


def test_bundle_is_flat_with_weights_stacker_pinned_wheels_and_notebook(registry, models, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["--manifest", str(models), "--out", str(out), "--dataset-id", "me/dfdc-test"]) == 0
    assert all(path.is_file() for path in out.iterdir())  # kaggle datasets create skips folders by default
    manifest = load_manifest(out / "weights_manifest.json")
    verify_manifest(manifest)
    assert all(spec.file.parent == out for spec in manifest.models) and manifest.stacker == out / "stacker.json"
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
