"""`python -m ensemble.bundle`: a folder to upload as one Kaggle dataset (under 1 GB) for the offline kernel.

    python -m ensemble.bundle --manifest weights_manifest.json --out bundle/ [--dataset-id USER/SLUG]

It copies the fp16 weights, the stacker JSON and a rewritten manifest; builds wheels of this kit and of the
packages the Kaggle image lacks (facenet-pytorch, decord, PyAV) into `wheels/`; writes Kaggle's
`dataset-metadata.json` and `kernel_notebook.py`, which installs the wheels offline and runs the kernel.
It refuses a bundle over the size limit (listing the largest files) and any weight whose sha256 differs
from the manifest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from kernel.models import ManifestError, load_manifest, verify_manifest
from kernel.submission import write_atomic

KAGGLE_LIMIT_BYTES = 10**9
REPO_ROOT = Path(__file__).resolve().parents[1]
EXTRA_WHEELS = ("facenet-pytorch==2.6.0", "decord==0.6.0", "av==18.1.0")

NOTEBOOK = '''"""Kaggle kernel (internet off): install the DFDC kit from the attached dataset and write submission.csv."""
import subprocess
import sys
from pathlib import Path

BUNDLE = Path("/kaggle/input/{slug}")
subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links",
                str(BUNDLE / "wheels"), {packages}], check=True)
subprocess.run([sys.executable, "-m", "kernel", "--manifest", str(BUNDLE / "weights_manifest.json"),
                "--out", "/kaggle/working/submission.csv"], check=True)
'''


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


def build_wheels(wheels: Path, extra: tuple[str, ...]) -> list[Path]:
    """Wheels of this kit and of `extra` requirements (no dependencies: the Kaggle image has torch etc.)."""
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(REPO_ROOT)], check=True)
    if extra:
        subprocess.run(pip + ["download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
                              *extra], check=True)
    return sorted(wheels.glob("*.whl"))


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
    if wheels:
        build_wheels(out / "wheels", extra_wheels)
    slug = dataset_id.split("/")[-1]
    write_atomic(out / "dataset-metadata.json", json.dumps(
        {"title": slug, "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}, indent=1))
    packages = ", ".join(repr(p.split("==")[0]) for p in ("dfdc-kit",) + tuple(extra_wheels))
    write_atomic(out / "kernel_notebook.py", NOTEBOOK.format(slug=slug, packages=packages))
    return check_size([p for p in out.rglob("*") if p.is_file()], limit, f"bundle {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ensemble.bundle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"))
    parser.add_argument("--out", type=Path, required=True, help="new folder for the bundle")
    parser.add_argument("--dataset-id", default="USERNAME/dfdc-kit-bundle", help="Kaggle dataset id OWNER/SLUG")
    parser.add_argument("--max-bytes", type=int, default=KAGGLE_LIMIT_BYTES, help="size limit (Kaggle: 1e9)")
    parser.add_argument("--no-wheels", action="store_true",
                        help="skip wheels/ (a local check needs no registry; a Kaggle upload needs the wheels)")
    args = parser.parse_args(argv)
    try:
        size = build_bundle(args.manifest, args.out, args.dataset_id, limit=args.max_bytes,
                            wheels=not args.no_wheels)
    except (BundleError, ManifestError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"bundle {args.out}: {size / 1e6:.1f} MB of {args.max_bytes / 1e6:.0f} MB; upload it as Kaggle dataset "
          f"{args.dataset_id} and run {args.out / 'kernel_notebook.py'} in a kernel with internet off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
