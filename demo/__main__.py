"""`python -m demo`: the whole kit end to end, on CPU, with no Kaggle data.

    python -m demo [--out runs/demo] [--data DFDC_FOLDER | --synthetic] [--quick] [--no-wheels]

Data: `--data` (any DFDC-format folder), else `../shared/data/dev/videos` where it exists, else (or with
`--synthetic`) a dataset generated from scikit-image's face photos (`demo/synthetic.py`). Then, printing
each command as a user would type it: group folds of the videos (one fold held out for the kernel) →
`training.recipe` on the rest (faces, folds, one Xception, one EfficientNet and one ResNet on every fold, the
stacker calibrated to 50 % fakes on their OOF predictions) → build the Kaggle bundle → run the kernel on the
held-out videos with the network blocked → validate.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from demo.synthetic import DemoSpec, make_dataset
from dfdc_core.config import load_settings
from dfdc_core.io import write_atomic
from kernel.validation import validate

REPO = Path(__file__).resolve().parents[1]
DEV_VIDEOS = REPO.parent / "shared" / "data" / "dev" / "videos"
CONFIG = Path(__file__).with_name("config.yaml")


def run(step: str, args: list[str]) -> None:
    """Run one kit command in a fresh process, echoing it; stop the demo if it fails."""
    command = [sys.executable] + args
    print(f"\n=== {step}\n$ python {shlex.join(args)}", flush=True)
    result = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if result.returncode != 0:
        raise SystemExit(f"demo step '{step}' failed (exit {result.returncode}): python {shlex.join(args)}")


def choose_data(args: argparse.Namespace, settings: dict, out: Path) -> tuple[Path, str]:
    if args.data is not None:
        return args.data, f"DFDC-format data in {args.data}"
    if DEV_VIDEOS.is_dir() and not args.synthetic:
        return DEV_VIDEOS, f"the dev videos in {DEV_VIDEOS}"
    data = out / "data"
    if not (data / "metadata.json").is_file():
        print(f"=== generating the synthetic demo dataset in {data}", flush=True)
        make_dataset(data, DemoSpec(**settings["synthetic"]))
    return data, f"synthetic videos made from scikit-image face photos in {data}"


def hold_out(folds_csv: Path, fold: int) -> list[str]:
    """The videos of `fold`: never trained on, scored by the kernel at the end."""
    with open(folds_csv, newline="") as handle:
        return [row["video"] for row in csv.DictReader(handle) if int(row["fold"]) == fold]


def link_videos(names: list[str], paths: dict[str, Path], metadata: dict, folder: Path) -> Path:
    """A DFDC-format folder of symbolic links to `names` with their metadata.json entries."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (folder / name).exists():
            (folder / name).symlink_to(paths[name])
    write_atomic(folder / "metadata.json", json.dumps({name: metadata[name] for name in names}))
    return folder


def recipe_file(settings: dict, out: Path) -> Path:
    """The demo's training recipe (demo/config.yaml: frames, folds, models, train) as a recipe YAML."""
    recipe = {"frames": settings["frames"], "folds": settings["recipe_folds"], "target_prior": 0.5,
              "aggregation": "mean", "features": ["logit"], "train": settings["train"], "models": settings["models"]}
    path = out / "recipe.yaml"
    write_atomic(path, yaml.safe_dump(recipe, sort_keys=False))
    return path


def video_paths(data: Path) -> tuple[dict[str, Path], dict]:
    """Every video named in the data's metadata.json file(s), and the merged metadata."""
    files = [data / "metadata.json"] if (data / "metadata.json").is_file() else sorted(data.glob("*/metadata.json"))
    paths, metadata = {}, {}
    for file in files:
        entries = json.loads(file.read_text())
        metadata.update(entries)
        paths.update({name: file.parent / name for name in entries})
    return paths, metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="folder for everything it makes")
    parser.add_argument("--data", type=Path, default=None, help="a DFDC-format folder to use instead")
    parser.add_argument("--synthetic", action="store_true", help="use the generated dataset even if dev data exists")
    parser.add_argument("--quick", action="store_true", help="smaller data and one epoch (the test suite's run)")
    parser.add_argument("--no-wheels", action="store_true", help="bundle without wheels (no registry needed)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    settings = load_settings(CONFIG)
    if args.quick:
        settings = {**settings, **settings.pop("quick")}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, described = choose_data(args, settings, out)
    print(f"demo on {described}; everything goes to {out}", flush=True)
    frames = str(settings["frames"])
    paths, metadata = video_paths(data)
    labelled = sorted(name for name, entry in metadata.items() if entry.get("label") in ("REAL", "FAKE"))
    metadata_files = sorted({str(paths[name].parent / "metadata.json") for name in labelled})
    run("group folds, one held out", ["training/folds.py", "--metadata", *metadata_files, "--k",
                                      str(settings["folds"]), "--out", str(out / "holdout_folds.csv")])
    held_out = hold_out(out / "holdout_folds.csv", settings["holdout_fold"])
    training = link_videos([n for n in labelled if n not in held_out], paths, metadata, out / "train_videos")
    recipe = out / "recipe"
    run("training recipe: faces, folds, every model on every fold, calibrated stacker",
        ["-m", "training.recipe", "--data", str(training), "--out", str(recipe), "--recipe",
         str(recipe_file(settings, out)), "--device", "cpu"])
    bundle = out / "bundle"
    run("build the Kaggle bundle", ["-m", "ensemble.bundle", "--manifest", str(recipe / "weights_manifest.json"),
                                    "--out", str(bundle)] + (["--no-wheels"] if args.no_wheels else []))
    test_videos = link_videos(held_out, paths, metadata, out / "test_videos")
    write_atomic(test_videos / "sample_submission.csv", "filename,label\n" + "".join(f"{n},0.5\n" for n in held_out))
    write_atomic(out / "metadata.json", json.dumps({name: metadata[name] for name in held_out}))
    submission = out / "submission.csv"
    run("kernel on the held-out videos, network blocked",
        ["-m", "kernel", "--block-network", "--videos", str(test_videos), "--sample-submission",
         str(test_videos / "sample_submission.csv"), "--manifest", str(bundle / "weights_manifest.json"),
         "--out", str(submission), "--device", "cpu", "--frames", frames])
    report = validate(submission, out / "metadata.json", out / "plots", allow_partial=False)
    minutes = (time.monotonic() - started) / 60
    print(f"\n=== done in {minutes:.1f} min on {described}")
    print(f"held-out videos: {report['n']}; log loss {report['log_loss']:.4f}, AUC {report['auc']:.4f}, "
          f"accuracy {report['accuracy']:.4f}")
    print(f"submission: {submission}\nplots: {out / 'plots'} (confusion_matrix.png, roc.png), "
          f"{recipe / 'report.png'} and {recipe / 'runs'}/*/loss_curve.png\nKaggle bundle: {bundle}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
