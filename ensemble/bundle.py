"""`python -m ensemble.bundle`: a folder to upload as one Kaggle dataset (under 1 GB) for the offline kernel.

    python -m ensemble.bundle --manifest weights_manifest.json --out bundle/ [--dataset-id USER/SLUG]
    kaggle datasets create -p bundle/        # the CLI's default --dir-mode skip keeps the flat folder whole

It copies the fp16 weights, the stacker JSON and a rewritten manifest; puts wheels of this kit and of the packages
the Kaggle image lacks (facenet-pytorch, decord, PyAV), downloaded for Kaggle's platform (x86_64 manylinux, CPython
3.12 and 3.11) whatever machine builds the bundle, beside them; writes the marker `dfdc_kit_bundle.json` (the exact
versions to install, the manifest), Kaggle's `dataset-metadata.json` and `kernel_notebook.py` (a copy of
`kernel/kaggle.py` with `dfdc_core/io.py` inlined: it runs before the kit is installed). The kit's wheel holds
only what `python -m kernel` imports, the packages `dfdc_core` and `kernel`. Every file sits at the top level:
`kaggle datasets create` skips sub-folders by default. It refuses a bundle over the size limit (listing the largest
files), any weight whose sha256 differs from the manifest, and before writing anything whatever the kernel would
refuse on Kaggle (its manifest and stacker checks, a weight file it cannot load as a state_dict), model names that are
no plain file names and an --out that is a file or not empty.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from dfdc_core.config import SettingsError, writable_folder
from dfdc_core.io import write_atomic
from dfdc_core.manifest import Manifest, ManifestError, verify_manifest
from dfdc_core.models import load_classifier
from kernel.kaggle import BUNDLE_MARKER

KAGGLE_LIMIT_BYTES = 10**9
REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_SOURCE = REPO_ROOT / "kernel" / "kaggle.py"
NOTEBOOK_IMPORT = "from dfdc_core.io import write_atomic"  # the notebook's one import from the kit, inlined
NOTEBOOK_MAIN = '\n\nif __name__ == "__main__":\n    if status := main():\n        sys.exit(status)\n'
KIT_PACKAGES = ("dfdc_core", "kernel")  # what `python -m kernel` imports: the kit's wheel holds only these,
# less the self-test and its synthetic media, which the notebook never runs
TEST_SUPPORT = ("selftest.py", "synthetic.py")
EXTRA_WHEELS = ("facenet-pytorch==2.6.0", "decord==0.6.0", "av==18.1.0")
KAGGLE_PYTHONS = ("3.12", "3.11")  # Kaggle's image: CPython 3.12 today, 3.11 in older pinned images
# Kaggle's image is Ubuntu 22.04 (glibc 2.35) on x86_64: wheels for any manylinux up to glibc 2.35 run there.
KAGGLE_PLATFORMS = tuple(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)) + (
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64")


BUNDLE_FILES = ("weights_manifest.json", BUNDLE_MARKER, "dataset-metadata.json", "kernel_notebook.py")


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


def bundle_names(manifest: Manifest) -> list[tuple[Path, str]]:
    """Each weight file (and the stacker) with its file name in the bundle, `<model name><suffix>`; `BundleError` if a
    model's name is no plain file name (a '/' or '..' would write outside --out) or two files would share a name."""
    copies = [(spec.file, f"{spec.name}{spec.file.suffix}") for spec in manifest.models]
    copies += [(manifest.stacker_file, manifest.stacker_file.name)] if manifest.stacker_file is not None else []
    for spec, (_, copy) in zip(manifest.models, copies):
        if Path(copy).name != copy or copy in (".", ".."):
            raise BundleError(f"{manifest.path}: model name {spec.name!r} makes {copy!r}, which is no plain file name, "
                              "the name of its weights in the bundle; rename the model (letters, digits, '_', '-', "
                              "'.'), in the manifest and in the stacker's features")
    names = [copy for _, copy in copies] + list(BUNDLE_FILES)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BundleError(f"{manifest.path}: the bundle would hold {twice} twice (a weight is named <model "
                          f"name><suffix>, the stacker keeps its name, and {list(BUNDLE_FILES)} are the bundle's own); "
                          "rename them")
    return copies


def copy_weights(manifest: Manifest, out: Path) -> dict:
    """Copy every weight (and the stacker) into `out` under its `bundle_names` name; return the rewritten
    manifest."""
    data = json.loads(manifest.path.read_text())
    copies = bundle_names(manifest)
    for entry, (source, copy) in zip(data["models"], copies):  # the stacker, if any, comes last
        shutil.copy2(source, out / copy)
        entry["file"] = copy
    if manifest.stacker_file is not None:
        shutil.copy2(manifest.stacker_file, out / copies[-1][1])
        data["stacker"] = copies[-1][1]
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
        shutil.copytree(REPO_ROOT / package, folder / package,
                        ignore=shutil.ignore_patterns("__pycache__", *TEST_SUPPORT))
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


def notebook_source() -> str:
    """`kernel/kaggle.py` as a script that stands alone: its import of `dfdc_core.io` replaced by that module's code,
    and its `main` run."""
    source = NOTEBOOK_SOURCE.read_text()
    lines = [line for line in source.splitlines() if line.startswith(NOTEBOOK_IMPORT)]
    if len(lines) != 1:
        raise BundleError(f"{NOTEBOOK_SOURCE} must import write_atomic once, as {NOTEBOOK_IMPORT!r}")
    module = (REPO_ROOT / "dfdc_core" / "io.py").read_text().replace("from __future__ import annotations\n", "")
    return source.replace(lines[0] + "\n", module).rstrip("\n") + NOTEBOOK_MAIN


def top_level_files(folder: Path) -> list[Path]:
    """The files `kaggle datasets create` uploads with its default `--dir-mode skip`: the folder's own files."""
    return sorted(path for path in folder.iterdir() if path.is_file())


def checked_manifest(manifest_path: Path, limit: int) -> Manifest:
    """The manifest, refused (`ManifestError`, `BundleError`) on anything the kernel would refuse on Kaggle: the
    kernel's own checks (`Manifest.load`), the weights' size limit, sha256 and content (each loaded as the kernel
    loads it), and names the bundle cannot hold."""
    manifest = Manifest.load(manifest_path)
    bundle_names(manifest)
    check_size([spec.file for spec in manifest.models if os.path.isfile(spec.file)], limit,
               f"the weights of {manifest_path}")
    verify_manifest(manifest)
    for spec in manifest.models:
        load_classifier(spec)
    return manifest


def build_bundle(manifest_path: str | Path, out: str | Path, dataset_id: str = "USERNAME/dfdc-kit-bundle",
                 extra_wheels: tuple[str, ...] = EXTRA_WHEELS, limit: int = KAGGLE_LIMIT_BYTES,
                 wheels: bool = True) -> int:
    """Build the bundle folder; return its size in bytes. Everything is checked before `out` is made."""
    manifest_path, out = Path(manifest_path), Path(out)
    manifest = checked_manifest(manifest_path, limit)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise BundleError(f"--out {out} is a file; pass a new folder")
    if os.path.isdir(out) and any(out.iterdir()):
        raise BundleError(f"{out} is not empty; pass a new folder to --out")
    writable_folder(out, "--out", out)
    try:
        data = copy_weights(manifest, out)
        write_atomic(out / "weights_manifest.json", json.dumps(data, indent=1))
        verify_manifest(Manifest.load(out / "weights_manifest.json"))  # the copies, not only the sources
        wheel_files = build_wheels(out, extra_wheels) if wheels else []
        write_atomic(out / BUNDLE_MARKER, json.dumps(
            {"requirements": sorted({wheel_requirement(wheel) for wheel in wheel_files}),
             "manifest": "weights_manifest.json", "wheels": [wheel.name for wheel in wheel_files],
             "pythons": list(KAGGLE_PYTHONS), "platforms": list(KAGGLE_PLATFORMS)}, indent=1))
        slug = dataset_id.split("/")[-1]
        write_atomic(out / "dataset-metadata.json", json.dumps(
            {"title": slug, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}, indent=1))
        write_atomic(out / "kernel_notebook.py", notebook_source())
    except OSError as error:
        raise BundleError(f"--out {out}: writing the bundle failed ({error}); free space there and build it again "
                          "into a new folder") from error
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
    except (BundleError, ManifestError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundle {args.out}: {size / 1e6:.1f} MB of {args.max_bytes / 1e6:.0f} MB; upload it with kaggle datasets "
          f"create -p {args.out} (dataset {args.dataset_id}), attach it and the competition's data to a notebook with "
          f"internet off, and run {args.out / 'kernel_notebook.py'} there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
