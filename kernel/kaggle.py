"""Kaggle as it is today: where the data and the bundle are mounted, and the notebook that always leaves a submission.

Standard library only. `python -m ensemble.bundle` copies this file into the bundle as `kernel_notebook.py`: run on
Kaggle (internet off, the competition data and the bundle attached), it runs before the kit is installed. The kernel
imports the same functions (`find_competition`, `write_atomic`, the in-flight file), so both agree on paths and files.

Where Kaggle mounts things (the root is `/kaggle`, or the folder in the environment variable `DFDC_KAGGLE_ROOT`):
- competition data: `input/competitions/<slug>/` (today), `input/<slug>/` (older notebooks), or a dataset copy at
  `input/datasets/<owner>/<slug>/`;
- the bundle: the folder holding `dfdc_kit_bundle.json`, anywhere under `input/` (datasets are mounted at
  `input/<slug>/` or `input/datasets/<owner>/<slug>/`).

What the notebook does, in order (`main`):
1. finds `test_videos/` and `sample_submission.csv`, and writes a complete submission.csv of the prior (0.5);
2. finds the bundle and installs its wheels offline at the exact versions the bundle names
   (`pip install --no-index --no-deps --find-links BUNDLE dfdc-kit==… av==…`);
3. runs `python -m kernel` with the paths it found, in a retry loop: the kernel resumes from its checkpoint; a
   video that was in progress when the kernel died twice gets the prior with the reason `crashed` (in progress:
   named in `<out>.inflight.json`, and, when the crash log names the crashing thread, the one that thread was on);
   a death with no video in progress (loading the models, a CUDA error) is tried once more on the CPU;
4. if the kernel never finished, merges the videos it did score (its checkpoint) into submission.csv.
Whatever fails, submission.csv holds a label for every video; the last line printed says how it was made.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dfdc_core.io import write_atomic  # inlined into the bundle's kernel_notebook.py

ROOT_ENV = "DFDC_KAGGLE_ROOT"
COMPETITION = "deepfake-detection-challenge"
BUNDLE_MARKER = "dfdc_kit_bundle.json"
BUNDLE_SEARCH_DEPTH = 4  # input/datasets/<owner>/<slug>/ is 3 folders below input/
PRIOR = 0.5  # the kernel's default prior and clip (kernel/default_config.json), for what the notebook writes itself
CLIP = (0.01, 0.99)
TIME_BUDGET_HOURS = 8.5  # Kaggle stops a notebook at 9 h; the rest is set-up and margin
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class NotFoundOnKaggle(FileNotFoundError):
    """The competition data or the bundle is not where Kaggle mounts it; the message lists what was searched."""


@dataclass(frozen=True)
class CompetitionData:
    videos: Path
    sample_submission: Path | None


def kaggle_root() -> Path:
    """`/kaggle`, or the folder named by the environment variable `DFDC_KAGGLE_ROOT` (tests, other hosts)."""
    return Path(os.environ.get(ROOT_ENV) or "/kaggle")


def competition_places(root: Path, slug: str = COMPETITION) -> list[Path]:
    """Where Kaggle may mount the competition's data, in the order they are tried (`*`: any dataset owner)."""
    inputs = root / "input"
    return [inputs / "competitions" / slug, inputs / slug, inputs / "datasets" / "*" / slug]


def find_competition(root: Path | None = None, slug: str = COMPETITION) -> CompetitionData:
    """The first mounted `test_videos/` folder, with the `sample_submission.csv` beside it (None if absent)."""
    places = competition_places(root or kaggle_root(), slug)
    for place in places:
        for folder in map(Path, sorted(glob.glob(str(place / "test_videos")))):
            if folder.is_dir():
                sample = folder.parent / "sample_submission.csv"
                return CompetitionData(folder, sample if sample.is_file() else None)
    searched = ", ".join(str(place / "test_videos") for place in places)
    raise NotFoundOnKaggle(f"no {slug} test_videos/ folder found; searched {searched} ({ROOT_ENV}="
                           f"{os.environ.get(ROOT_ENV, '')!r}); attach the competition's data to the notebook, or pass "
                           "--videos DIR --sample-submission CSV")


def find_bundle(root: Path | None = None) -> Path:
    """The folder holding the bundle's marker file, searched for under `<root>/input` (first in sorted order)."""
    inputs = (root or kaggle_root()) / "input"
    found, searched = [], 0
    for folder, subfolders, files in os.walk(inputs):
        searched += 1
        depth = len(Path(folder).relative_to(inputs).parts)
        subfolders[:] = sorted(name for name in subfolders if depth < BUNDLE_SEARCH_DEPTH and name != "test_videos")
        if BUNDLE_MARKER in files:
            found.append(Path(folder))
    if not found:
        mounted = sorted(path.name for path in inputs.iterdir()) if inputs.is_dir() else []
        raise NotFoundOnKaggle(f"no {BUNDLE_MARKER} under {inputs} ({searched} folders searched, {BUNDLE_SEARCH_DEPTH} "
                               f"levels deep; mounted there: {mounted}); attach the dataset made by python -m "
                               "ensemble.bundle to the notebook")
    if len(found) > 1:
        say(f"{len(found)} bundles found ({', '.join(map(str, found))}); using {found[0]}")
    return found[0]


def read_bundle(folder: Path) -> dict:
    """The bundle's marker: the requirements to install (exact versions) and the manifest's file name."""
    return json.loads((folder / BUNDLE_MARKER).read_text())


# ------------------------------------------------------------------------------------------ files the kernel shares

def checkpoint_path(out: Path) -> Path:
    """The kernel's crash checkpoint beside the submission `out`."""
    return out.with_name(out.name + ".partial.jsonl")


def in_flight_path(out: Path) -> Path:
    """Beside the submission `out`: the videos the kernel is decoding and scoring right now, and their threads."""
    return out.with_name(out.name + ".inflight.json")


def summary_path(out: Path) -> Path:
    """Beside the submission `out`: the run's summary (device, timings, fallbacks, model sets, resolved config)."""
    return out.with_name(out.name + ".summary.json")


def crash_log_path(out: Path) -> Path:
    """Beside the submission `out`: where `python -m kernel` has `faulthandler` write every thread's stack when a
    signal (segmentation fault, abort) kills it, the crashing thread marked 'Current thread 0x…'."""
    return out.with_name(out.name + ".crash.log")


def crash_suspects(out: Path) -> list[str]:
    """The videos to blame for the kernel's death: the one whose thread the crash log names as crashing, else every
    video it was decoding or scoring (a kill by SIGKILL, e.g. out of memory, leaves no log)."""
    try:
        marks = json.loads(in_flight_path(out).read_text())
    except (OSError, ValueError):
        return []
    in_progress = [mark for mark in marks.values() if isinstance(mark, dict) and isinstance(mark.get("video"), str)]
    try:
        crashed = re.search(r"^Current thread (0x[0-9a-fA-F]+)", crash_log_path(out).read_text(errors="replace"),
                            re.MULTILINE)
    except OSError:
        crashed = None
    culprits = [mark["video"] for mark in in_progress if crashed and mark.get("thread") == int(crashed.group(1), 16)]
    return sorted(set(culprits or [mark["video"] for mark in in_progress]))


def checkpoint_labels(out: Path) -> dict[str, float]:
    """`{video: label}` of the finite labels in the kernel's checkpoint (a damaged line is skipped)."""
    labels = {}
    path = checkpoint_path(out)
    lines = path.read_text(errors="replace").splitlines()[1:] if path.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
            label = float(row["label"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(label):
            labels[row["filename"]] = label
    return labels


# ------------------------------------------------------------------------------------------ the notebook

def say(message: str) -> None:
    print(f"[notebook] {message}", flush=True)


def video_files(folder: Path) -> list[str]:
    """The names of the videos in `folder` (by their suffix, `VIDEO_SUFFIXES`), sorted: what the kernel predicts
    when no sample submission lists them."""
    return sorted(path.name for path in folder.iterdir() if path.suffix.lower() in VIDEO_SUFFIXES)


def target_names(data: CompetitionData) -> list[str]:
    """The sample submission's `filename` column in order, or every video in the folder sorted."""
    if data.sample_submission is None:
        return video_files(data.videos)
    with open(data.sample_submission, newline="") as handle:
        return [row["filename"] for row in csv.DictReader(handle)]


def write_labels(out: Path, names: list[str], labels: dict[str, float]) -> None:
    """`filename,label` for every name in order (the prior where `labels` has none), clipped, atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["filename", "label"])
    for name in names:
        writer.writerow([name, f"{min(max(labels.get(name, PRIOR), CLIP[0]), CLIP[1]):.6f}"])
    write_atomic(out, text.getvalue())


def install(bundle: Path) -> None:
    """Install the bundle's wheels offline at the exact versions its marker names (`CalledProcessError` if pip
    fails). `--no-deps`: the Kaggle image has torch, timm, OpenCV and the rest."""
    requirements = read_bundle(bundle)["requirements"]
    say(f"installing {' '.join(requirements)} from {bundle}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(bundle),
                    *requirements], check=True)


@dataclass(frozen=True)
class KernelRuns:
    """How the retry loop ended: `finished` when a kernel run wrote the submission."""

    finished: bool
    runs: int
    crashed: list[str]
    why: str


def run_kernel(command: list[str], out: Path, deadline: float) -> KernelRuns:
    """Run `command` (`python -m kernel` with its paths; the loop adds --out, --device, --time-budget-hours and
    --crashed) until it finishes, it refuses its settings (exit 2), the deadline passes, or it died twice with no
    video in progress. After each death the videos it was decoding or scoring count one crash; a video with two is
    given the prior (reason `crashed`) by the next run, which resumes from the checkpoint. A death with no video in
    progress (loading the models, a CUDA error) is tried once more on the CPU."""
    crashes: Counter[str] = Counter()
    crashed_file = out.with_name(out.name + ".crashed.json")
    idle_deaths, runs = 0, 0
    while (hours_left := (deadline - time.monotonic()) / 3600) > 0:
        write_atomic(crashed_file, json.dumps(twice(crashes)))
        runs += 1
        code = subprocess.run(command + ["--out", str(out), "--device", "cpu" if idle_deaths else "auto",
                                         "--time-budget-hours", f"{hours_left:.4f}", "--crashed",
                                         str(crashed_file)]).returncode
        if code in (0, 2):
            why = "the kernel finished" if code == 0 else "the kernel refused its settings (exit 2, message above)"
            return KernelRuns(code == 0, runs, twice(crashes), why)
        suspects = crash_suspects(out)
        crashes.update(suspects)
        if suspects:
            say(f"the kernel died (exit {code}) while on {', '.join(suspects)}; resuming"
                + "".join(f"; {name} crashed it twice: it gets the prior" for name in suspects if crashes[name] == 2))
            continue
        idle_deaths += 1
        if idle_deaths == 2:
            return KernelRuns(False, runs, twice(crashes), f"the kernel died twice with no video in progress "
                                                           f"(exit {code})")
        say(f"the kernel died (exit {code}) with no video in progress; trying once more on the CPU")
    return KernelRuns(False, runs, twice(crashes), "the time budget ran out")


def twice(crashes: Counter[str]) -> list[str]:
    """The videos that were in progress at two deaths of the kernel."""
    return sorted(name for name, count in crashes.items() if count >= 2)


def kernel_command(data: CompetitionData, bundle: Path) -> list[str]:
    """`python -m kernel` with the paths found (the retry loop adds the rest)."""
    command = [sys.executable, "-m", "kernel", "--videos", str(data.videos), "--manifest",
               str(bundle / read_bundle(bundle)["manifest"]), "--no-progress"]
    if data.sample_submission is not None:
        command += ["--sample-submission", str(data.sample_submission)]
    return command


def finish(out: Path, names: list[str], runs: KernelRuns) -> None:
    """Report how the kernel runs ended; if none finished, merge the videos the kernel scored (its checkpoint) into
    the prior-only submission."""
    if runs.finished:
        say(f"done after {runs.runs} kernel run(s): {out} written by the kernel"
            + (f"; {len(runs.crashed)} videos crashed it and got the prior" if runs.crashed else ""))
        return
    scored = checkpoint_labels(out)
    write_labels(out, names, scored)
    say(f"WARNING: {runs.why}; {out} holds the {sum(name in scored for name in names)} videos the kernel scored and "
        f"the prior {PRIOR} for the other {sum(name not in scored for name in names)}")


def main() -> int:
    """The notebook: a prior-only submission first, then the kit from the bundle, then the kernel until it ends.
    Exit 1 only when the competition's videos cannot be listed (no submission can be written then)."""
    started = time.monotonic()
    root = kaggle_root()
    out = root / "working" / "submission.csv"
    try:
        data = find_competition(root)
        names = target_names(data)
    except (NotFoundOnKaggle, OSError, KeyError, csv.Error) as error:
        say(f"ERROR: cannot list the videos to predict ({type(error).__name__}: {error})")
        return 1
    write_labels(out, names, {})
    say(f"{out}: the prior {PRIOR} for all {len(names)} videos of {data.videos}, until the kernel replaces it")
    try:
        bundle = find_bundle(root)
        install(bundle)
        command = kernel_command(data, bundle)
    except (NotFoundOnKaggle, OSError, ValueError, KeyError, subprocess.CalledProcessError) as error:
        say(f"WARNING: the kit cannot be installed ({type(error).__name__}: {error}); {out} keeps the prior "
            "for every video")
        return 0
    finish(out, names, run_kernel(command, out, started + TIME_BUDGET_HOURS * 3600))
    return 0

