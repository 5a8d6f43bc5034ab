import json
import shutil

import pytest

from ensemble.bundle import KAGGLE_LIMIT_BYTES, BundleError, build_bundle, main
from kernel.models import ManifestError, load_manifest, verify_manifest


@pytest.fixture()
def models(tiny_manifest_path, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_manifest_path.parent, folder)
    (folder / "stacker.json").write_text(json.dumps({"feature_names": [], "coef": [], "intercept": 0.0}))
    data = json.loads((folder / "weights_manifest.json").read_text())
    data["stacker"] = "stacker.json"
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    return folder / "weights_manifest.json"


def test_bundle_holds_weights_stacker_wheels_and_notebook(models, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["--manifest", str(models), "--out", str(out), "--dataset-id", "me/dfdc-test"]) == 0
    manifest = load_manifest(out / "weights_manifest.json")
    verify_manifest(manifest)
    assert all(spec.file.parent == out for spec in manifest.models) and manifest.stacker == out / "stacker.json"
    wheels = sorted(p.name.split("-")[0] for p in (out / "wheels").glob("*.whl"))
    assert wheels == ["av", "decord", "dfdc_kit", "facenet_pytorch"]
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == "me/dfdc-test"
    notebook = (out / "kernel_notebook.py").read_text()
    assert "/kaggle/input/dfdc-test" in notebook and "--no-index" in notebook
    compile(notebook, "kernel_notebook.py", "exec")
    assert "MB of 1000 MB" in capsys.readouterr().out


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
