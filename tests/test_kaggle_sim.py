"""Issue 11: the bundle's notebook on a simulated Kaggle.

A Kaggle tree in a temporary folder (today's layout and the older one), the bundle of two tiny models uploaded as
`kaggle datasets create` uploads it (its top-level files only), and a Python environment like Kaggle's image: the
project's torch, timm, OpenCV and pip, but neither this kit nor the packages the bundle brings (a venv without pip
whose `.pth` points at a copy of the project's site-packages made of links, those packages left out). The notebook
runs there with the network cut (a new network namespace, `kernel/offline.py` loaded by path), installs the kit from
the bundle's wheels only, runs the kernel and must leave a complete, valid submission. Building the bundle needs the
package registry (the wheels for Kaggle's platform): without it the test is skipped, saying why.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.bundle import build_bundle, top_level_files
from kernel.kaggle import BUNDLE_MARKER, COMPETITION
from tests.helpers import face_videos, registry_unreachable

pytestmark = pytest.mark.slow  # builds wheels and runs the notebook in a simulated Kaggle: minutes

REPO = Path(__file__).resolve().parents[1]
PROJECT_SITE = Path(sysconfig.get_paths()["purelib"])
BROUGHT_BY_THE_BUNDLE = {"dfdc_kit", "facenet_pytorch", "av", "decord"}
LAYOUTS = {"today": (f"input/competitions/{COMPETITION}", "input/datasets/me/dfdc-kit-bundle"),
           "older": (f"input/{COMPETITION}", "input/dfdc-kit-bundle")}
LAUNCHER = """
import importlib.util, runpy, sys
spec = importlib.util.spec_from_file_location("offline", sys.argv[1])
offline = sys.modules["offline"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline)
print("[launcher]", offline.block_network().describe(), flush=True)
runpy.run_path(sys.argv[2], run_name="__main__")
"""


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_manifest_path):
    if why := registry_unreachable(tmp_path_factory.mktemp("registry_probe")):
        pytest.skip(why)
    out = tmp_path_factory.mktemp("bundle_parent") / "bundle"
    build_bundle(tiny_manifest_path, out, "me/dfdc-kit-bundle")
    return out


def brought_by_the_bundle(entry: str) -> bool:
    """Whether a site-packages entry (package, .dist-info, .libs, editable finder) belongs to a package the bundle
    installs, or is this kit's editable install."""
    return entry.startswith("__editable__") or re.split(r"[-.]", entry)[0].lower() in BROUGHT_BY_THE_BUNDLE


def kaggle_python(folder: Path) -> Path:
    """A venv like Kaggle's image: the project's packages through links, but not those the bundle brings."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    image = folder / "image-site-packages"
    image.mkdir()
    for entry in PROJECT_SITE.iterdir():
        if not brought_by_the_bundle(entry.name):
            (image / entry.name).symlink_to(entry)
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "kaggle_image.pth").write_text(f"{image}\n")
    return folder / "bin" / "python"


def clean_env(root: Path) -> dict[str, str]:
    """This process's environment without Python, pip and Hugging Face settings, with the Kaggle root set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PIP_", "HF_"))}
    return dict(env, DFDC_KAGGLE_ROOT=str(root), PIP_CONFIG_FILE=os.devnull)


def kaggle_tree(root: Path, layout: str, bundle: Path) -> tuple[list[str], Path]:
    """The competition's data (two face clips and a broken file, a sample submission) and the uploaded bundle in
    `layout` under `root`; returns the sample's names and the dataset folder."""
    competition, dataset = (root / part for part in LAYOUTS[layout])
    videos = face_videos(competition / "test_videos", 2, frames=10)
    (videos / "broken.mp4").write_bytes(b"\x00" * 500)
    names = ["face_1.mp4", "broken.mp4", "face_0.mp4"]
    pd.DataFrame({"filename": names, "label": 0.5}).to_csv(competition / "sample_submission.csv", index=False)
    dataset.mkdir(parents=True)
    for path in top_level_files(bundle):  # what kaggle datasets create uploads with its default --dir-mode skip
        os.link(path, dataset / path.name)
    (root / "working").mkdir()
    return names, dataset


def test_the_upload_keeps_every_wheel(bundle):
    marker = json.loads((bundle / BUNDLE_MARKER).read_text())
    uploaded = {path.name for path in top_level_files(bundle)}
    assert set(marker["wheels"]) <= uploaded and {path.name for path in bundle.rglob("*.whl")} <= uploaded
    assert {requirement.split("==")[0] for requirement in marker["requirements"]} == {
        "dfdc-kit", "facenet-pytorch", "decord", "av"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_notebook_on_a_simulated_kaggle_leaves_a_valid_submission(layout, bundle, tmp_path):
    root = tmp_path / "kaggle"
    names, dataset = kaggle_tree(root, layout, bundle)
    python = kaggle_python(tmp_path / "image")
    env = clean_env(root)
    isolated = subprocess.run([str(python), "-c", "import kernel"], cwd=tmp_path, env=env, capture_output=True,
                              text=True)
    assert isolated.returncode == 1 and "No module named 'kernel'" in isolated.stderr  # only the wheels bring it
    result = subprocess.run([str(python), "-c", LAUNCHER, str(REPO / "kernel" / "offline.py"),
                             str(dataset / "kernel_notebook.py")], cwd=root / "working", env=env, capture_output=True,
                            text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "[launcher] network blocked" in output and "[notebook] done after 1 kernel run(s)" in output, output[-4000:]
    submission = pd.read_csv(root / "working" / "submission.csv")
    assert submission["filename"].tolist() == names
    labels = submission.set_index("filename")["label"]
    assert np.isfinite(labels).all() and labels.between(0.01, 0.99).all()
    assert labels["broken.mp4"] == 0.5 and labels["face_0.mp4"] != 0.5
    summary = json.loads((root / "working" / "submission.csv.summary.json").read_text())
    assert summary["device"] == "cpu" and summary["fallbacks"] == {"decode_error": 1}
    imported = subprocess.run([str(python), "-c", "import av, decord, facenet_pytorch, kernel\n"
                               "print([module.__file__ for module in (av, decord, facenet_pytorch, kernel)])"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
    site = str(next((tmp_path / "image" / "lib").glob("python3*/site-packages")))
    assert imported.returncode == 0 and imported.stdout.count(site) == 4, imported.stdout + imported.stderr
    shutil.rmtree(tmp_path / "image")
