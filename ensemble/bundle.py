"""`python -m ensemble.bundle`: a folder to upload as one Kaggle dataset (under 1 GB) for the offline kernel.

    python -m ensemble.bundle --manifest weights_manifest.json --out bundle/ [--dataset-id USER/SLUG]
    kaggle datasets create -p bundle/        # the CLI's default --dir-mode skip keeps the flat folder whole

It copies the fp16 weights, the stacker JSON and a rewritten manifest; puts wheels of this kit and of the packages
the Kaggle image lacks (facenet-pytorch, decord, PyAV), downloaded for Kaggle's platform (x86_64 manylinux, CPython
3.12 and 3.11) whatever machine builds the bundle, beside them; writes the marker `dfdc_kit_bundle.json` (the exact
versions to install, the manifest), Kaggle's `dataset-metadata.json` and `kernel_notebook.py` (a copy of
`kernel/kaggle.py`). Every file sits at the top level: `kaggle datasets create` skips sub-folders by default. It
refuses a bundle over the size limit (listing the largest files) and any weight whose sha256 differs from the
manifest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernel.kaggle import BUNDLE_MARKER
from kernel.models import ManifestError, load_manifest, verify_manifest
from kernel.submission import write_atomic

KAGGLE_LIMIT_BYTES = 10**9
REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_SOURCE = REPO_ROOT / "kernel" / "kaggle.py"
KIT_PACKAGES = ("kernel", "training", "ensemble", "demo")  # setup.py's packages
EXTRA_WHEELS = ("facenet-pytorch==2.6.0", "decord==0.6.0", "av==18.1.0")
KAGGLE_PYTHONS = ("3.12", "3.11")  # Kaggle's image: CPython 3.12 today, 3.11 in older pinned images
# Kaggle's image is Ubuntu 22.04 (glibc 2.35) on x86_64: wheels for any manylinux up to glibc 2.35 run there.
KAGGLE_PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")


class BundleError(ValueError):
    """The bundle cannot be built as asked; the message says why and what to change."""


def largest_files(paths: list[Path], count: int = 5) -> str:
    ranked = sorted(paths, key=lambda p: p.stat().st_size, reverse=True)[:count]
    return "; ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in ranked)


def check_size(paths: list[Path], limit: int, what: str) -> int:
    total = sum(p.stat().st_size for p in paths)
    if total > limit:
        raise BundleError(f"{what} holds {total / 1e9:.3f} GB, over the {limit / 1e9:.3f} GB Kaggle limit; "
                          f"largest files: {largest_files(paths)}. Drop models or use smaller ones")
    return total


def copy_weights(manifest_path: Path, out: Path) -> dict:
    """Verify and copy every weight (and the stacker) into `out`; return the rewritten manifest."""
    manifest = load_manifest(manifest_path)
    verify_manifest(manifest)
    data = json.loads(manifest_path.read_text())
    for entry, spec in zip(data["models"], manifest.models):  # model names are unique in a manifest
        copy = f"{spec.name}{spec.file.suffix}"
        shutil.copy2(spec.file, out / copy)
        entry["file"] = copy
    if manifest.stacker is not None:
        shutil.copy2(manifest.stacker, out / manifest.stacker.name)
        data["stacker"] = manifest.stacker.name
    return data


def kaggle_download_command(python: str, folder: Path, requirements: tuple[str, ...]) -> list[str]:
    """`pip download` of binary wheels for Kaggle's platform and CPython `python` (e.g. "3.12"), without
    dependencies, into `folder`."""
    platforms = [flag for platform in KAGGLE_PLATFORMS for flag in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation",
            "cp", "--python-version", python, "--abi", f"cp{python.replace('.', '')}", *platforms, "--dest",
            str(folder), *requirements]


def kit_sources(folder: Path) -> Path:
    """A copy of this kit's setup.py and packages in `folder`: the wheel is built from exactly the files of the tree,
    with no stale `build/` left in the repository (or taken from it)."""
    shutil.copy2(REPO_ROOT / "setup.py", folder / "setup.py")
    for package in KIT_PACKAGES:
        shutil.copytree(REPO_ROOT / package, folder / package, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def build_wheels(folder: Path, extra: tuple[str, ...]) -> list[Path]:
    """Wheels of this kit (pure Python) and of `extra` requirements for Kaggle (no dependencies: the Kaggle image has
    torch etc.), in `folder` itself; `BundleError` with pip's message if a build or download fails."""
    with tempfile.TemporaryDirectory(prefix="dfdc_kit_sources_") as sources:
        commands = [[sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder),
                     str(kit_sources(Path(sources)))]]
        commands += [kaggle_download_command(python, folder, extra) for python in KAGGLE_PYTHONS if extra]
        for command in commands:
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise BundleError(f"{' '.join(command[2:4])} failed (exit {result.returncode}): "
                                  f"{result.stderr.strip()[-2000:]}")
    return sorted(folder.glob("*.whl"))


def wheel_requirement(wheel: Path) -> str:
    """`name==version` of a wheel file (its name's first two fields, as the wheel format defines them)."""
    name, version = wheel.name.split("-")[:2]
    return f"{name.replace('_', '-').lower()}=={version}"


def top_level_files(folder: Path) -> list[Path]:
    """The files `kaggle datasets create` uploads with its default `--dir-mode skip`: the folder's own files."""
    return sorted(path for path in folder.iterdir() if path.is_file())


def build_bundle(manifest_path: str | Path, out: str | Path, dataset_id: str = "USERNAME/dfdc-kit-bundle",
                 extra_wheels: tuple[str, ...] = EXTRA_WHEELS, limit: int = KAGGLE_LIMIT_BYTES,
                 wheels: bool = True) -> int:
    """Build the bundle folder; return its size in bytes."""
    manifest_path, out = Path(manifest_path), Path(out)
    manifest = load_manifest(manifest_path)
    sources = [spec.file for spec in manifest.models if spec.file.is_file()]
    check_size(sources, limit, f"the weights of {manifest_path}")
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} is not empty; pass a new folder to --out")
    out.mkdir(parents=True, exist_ok=True)
    data = copy_weights(manifest_path, out)
    write_atomic(out / "weights_manifest.json", json.dumps(data, indent=1))
    verify_manifest(load_manifest(out / "weights_manifest.json"))  # the copies, not only the sources
    wheel_files = build_wheels(out, extra_wheels) if wheels else []
    write_atomic(out / BUNDLE_MARKER, json.dumps(
        {"requirements": sorted({wheel_requirement(wheel) for wheel in wheel_files}),
         "manifest": "weights_manifest.json", "wheels": [wheel.name for wheel in wheel_files],
         "pythons": list(KAGGLE_PYTHONS), "platforms": list(KAGGLE_PLATFORMS)}, indent=1))
    slug = dataset_id.split("/")[-1]
    write_atomic(out / "dataset-metadata.json", json.dumps(
        {"title": slug, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}, indent=1))
    shutil.copyfile(NOTEBOOK_SOURCE, out / "kernel_notebook.py")
    skipped = sorted(path.name for path in out.iterdir() if path not in top_level_files(out))
    if skipped:
        raise BundleError(f"{out} holds {skipped}, which kaggle datasets create (--dir-mode skip) would not upload; "
                          "every file of the bundle must sit at its top level")
    return check_size(top_level_files(out), limit, f"bundle {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"))
    parser.add_argument("--out", type=Path, required=True, help="new folder for the bundle")
    parser.add_argument("--dataset-id", default="USERNAME/dfdc-kit-bundle", help="Kaggle dataset id OWNER/SLUG")
    parser.add_argument("--max-bytes", type=int, default=KAGGLE_LIMIT_BYTES, help="size limit (Kaggle: 1e9)")
    parser.add_argument("--no-wheels", action="store_true",
                        help="skip the wheels (a local check needs no registry; a Kaggle upload needs the wheels)")
    args = parser.parse_args(argv)
    try:
        size = build_bundle(args.manifest, args.out, args.dataset_id, limit=args.max_bytes,
                            wheels=not args.no_wheels)
    except (BundleError, ManifestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundle {args.out}: {size / 1e6:.1f} MB of {args.max_bytes / 1e6:.0f} MB; upload it with kaggle datasets "
          f"create -p {args.out} (dataset {args.dataset_id}), attach it and the competition's data to a notebook with "
          f"internet off, and run {args.out / 'kernel_notebook.py'} there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
