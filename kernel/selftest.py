"""`python -m kernel.selftest`: the kernel on a corpus of crafted inputs, printed as a table input → outcome.

Videos (zero-byte, random bytes, truncated, audio-only, one frame, portrait, 4K, 8192 x 8192, MJPEG, VP9, HEVC and
AV1 where this PyAV can encode them, variable frame rate, odd names, names pointing outside the videos folder, a
folder, a missing file) are scored in one `predict` run, over a checkpoint of the same set-up whose lines for some of
them are damaged: each must get its expected reason and a finite label, the damaged ones scored again. Each bad
setting (a stacker with NaN, `--frames 0`, `--out` a folder or an input, a weight file that is no state_dict, ...)
is one `python -m kernel` call in this process, which must exit 2 with a message naming the setting, and leave every
file of the corpus as it was. Exit status 0 when every outcome is the expected one. `tests/test_reliability.py` runs
the same corpus.

    python -m kernel.selftest [--manifest weights_manifest.json] [--work DIR] [--device cpu]

Without `--manifest` it makes two tiny random models: their scores mean nothing, the outcomes are the point.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from dfdc_core.synthetic import frames_of, random_manifest, write_audio_only, write_video
from kernel.config import load_config

FRAMES = 8  # per video: enough for every outcome, quick on CPU
OVERSIZED_SIDE = 8192


@dataclass(frozen=True)
class Outcome:
    """One row of the table: what went in, what had to come out and what did."""

    case: str
    expected: str
    got: str
    passed: bool
    label: float | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ crafted videos

def truncated(path: Path, share: float, faststart: bool) -> None:
    """A clip cut to `share` of its bytes; with `faststart` its index comes first, so the start still decodes."""
    write_video(path, frames_of(60, 180, 320, face=False), faststart=faststart)
    path.write_bytes(path.read_bytes()[:int(path.stat().st_size * share)])


@dataclass(frozen=True)
class VideoCase:
    """One corpus video: its name in the sample submission, the reason it must get and how its file is made."""

    filename: str
    expected: str
    make: Callable[[Path], object] | None  # called with videos_dir / filename; None: no file is made
    codec: str | None = None  # an encoder this case needs (skipped where PyAV lacks it)


def faceless(path: Path) -> Path:
    return write_video(path, frames_of(20, 96, 128, face=False))


def with_face(height: int, width: int, count: int = 10, codec: str = "libx264", pix_fmt: str = "yuv420p",
              pts_ms: list[int] | None = None) -> Callable[[Path], Path]:
    return lambda path: write_video(path, frames_of(count, height, width, face=True), codec=codec, pix_fmt=pix_fmt,
                                    pts_ms=pts_ms)


def video_cases(work: Path) -> list[VideoCase]:
    """The video corpus; `work` is the folder holding the videos folder (an absolute name must point out of it)."""
    outside = work / "outside.mp4"
    variable_ms = [0, 10, 43, 133, 383, 393, 426, 516, 766, 776, 809, 899]
    return [
        VideoCase("face.mp4", "ok", with_face(180, 320)),
        VideoCase("one_frame.mp4", "ok", with_face(180, 320, count=1)),
        VideoCase("portrait_face.mp4", "ok", with_face(320, 180)),
        VideoCase("face_4k.mp4", "ok", with_face(2160, 3840, count=3)),
        VideoCase(f"face_{OVERSIZED_SIDE}x{OVERSIZED_SIDE}.mp4", "ok",
                  with_face(OVERSIZED_SIDE, OVERSIZED_SIDE, count=2)),
        VideoCase("variable_frame_rate.mp4", "ok", with_face(180, 320, len(variable_ms), pts_ms=variable_ms)),
        VideoCase("mjpeg.avi", "ok", with_face(180, 320, codec="mjpeg", pix_fmt="yuvj420p"), "mjpeg"),
        VideoCase("vp9.webm", "ok", with_face(180, 320, codec="libvpx-vp9"), "libvpx-vp9"),
        VideoCase("hevc.mp4", "ok", with_face(180, 320, codec="libx265"), "libx265"),
        VideoCase("av1.mkv", "ok", with_face(180, 320, codec="libsvtav1"), "libsvtav1"),
        VideoCase("no_face.mp4", "no_face", faceless),
        VideoCase("truncated_index_first.mp4", "no_face", lambda path: truncated(path, 0.5, faststart=True)),
        VideoCase("truncated.mp4", "decode_error", lambda path: truncated(path, 0.3, faststart=False)),
        VideoCase("zero_bytes.mp4", "decode_error", lambda path: path.write_bytes(b"")),
        VideoCase("random_bytes.mp4", "decode_error",
                  lambda path: path.write_bytes(np.random.default_rng(0).bytes(20000))),
        VideoCase("audio_only.mp4", "decode_error", write_audio_only),
        VideoCase("a_folder.mp4", "decode_error", lambda path: path.mkdir()),
        VideoCase("missing.mp4", "missing_file", None),
        VideoCase("name with spaces, ünïcödé & ;.mp4", "no_face", faceless),
        VideoCase("percent%d.mp4", "no_face", faceless),
        VideoCase("-leading-dash.mp4", "no_face", faceless),
        VideoCase("NA", "no_face", lambda path: faceless(path.with_suffix(".mp4")).rename(path)),  # pandas: NaN
        VideoCase("../outside.mp4", "outside_videos", with_face(180, 320)),  # readable, and must not be read
        VideoCase("sub/../../outside.mp4", "outside_videos", None),
        VideoCase(str(outside), "outside_videos", None),
    ]


def can_encode(codec: str) -> bool:
    """Whether this machine's PyAV has the encoder `codec`."""
    import av

    try:
        av.codec.Codec(codec, "w")
    except (ValueError, av.error.FFmpegError):  # PyAV raises UnknownCodecError (a ValueError) for a missing one
        return False
    return True


def make_file(case: VideoCase, videos: Path) -> str | None:
    """Write the case's file under `videos`; None, or why a codec case was skipped (an encoder this machine
    lacks, or one that refuses these frames). Any other case that cannot be made is an error."""
    if case.make is None:
        return None
    if case.codec is None:
        case.make(videos / case.filename)
        return None
    if not can_encode(case.codec):
        return f"skipped: this PyAV has no {case.codec} encoder"
    try:
        case.make(videos / case.filename)
    except Exception as error:  # an encoder that exists but refuses these frames: reported as skipped
        return f"skipped: {case.codec} cannot encode here ({type(error).__name__}: {error})"
    return None


def run_video_corpus(work: Path, manifest: Path, device: str = "cpu") -> list[Outcome]:
    """Score the corpus in one `predict` run; one outcome per video."""
    from kernel.pipeline import predict

    videos = work / "videos"
    videos.mkdir(parents=True)
    cases = video_cases(work)
    skipped = {case.filename: why for case in cases if (why := make_file(case, videos)) is not None}
    sample = work / "sample_submission.csv"
    names = [case.filename for case in cases if case.filename not in skipped]
    pd.DataFrame({"filename": names, "label": 0.5}).to_csv(sample, index=False)
    config = load_config(frames=FRAMES)
    out = work / "out" / "submission.csv"
    damaged = damaged_checkpoint(out, manifest, config, videos)
    run = predict(videos, sample, manifest, out, device, config, progress=False)
    labels = dict(zip(run.submission["filename"], run.submission["label"]))
    low, high = config["clip"]
    reused = sorted(name for name in damaged if run.seconds[name] == DAMAGED_SECONDS)
    outcomes = [Outcome(f"checkpoint lines of {', '.join(damaged)}: {', '.join(DAMAGED_LINES.values())}",
                        "scored again", f"reused: {reused}" if reused else "scored again", not reused)]
    for case in cases:
        if case.filename in skipped:
            outcomes.append(Outcome(case.filename, case.expected, skipped[case.filename], True))
            continue
        label, reason = float(labels[case.filename]), run.reasons[case.filename]
        passed = reason == case.expected and math.isfinite(label) and low <= label <= high
        outcomes.append(Outcome(case.filename, case.expected, reason, passed, label, run.seconds[case.filename]))
    return outcomes


DAMAGED_SECONDS = 1.25  # of every damaged line: a video scored again gets its own measured seconds
DAMAGED_LINES = {"face.mp4": "NaN label", "one_frame.mp4": "label 'nan'", "portrait_face.mp4": "null reason",
                 "no_face.mp4": "numeric reason"}


def damaged_checkpoint(out: Path, manifest: Path, config: dict, videos: Path) -> list[str]:
    """A checkpoint of this very set-up (its signature) whose lines are damaged (`DAMAGED_LINES`, and a number as a
    file name): the run must score their videos again (each used to crash every rerun); returns their names."""
    from dfdc_core.manifest import Manifest
    from kernel.pipeline import run_signature
    from kernel.submission import CHECKPOINT_FORMAT, checkpoint_path, video_identity

    changes = [{"label": float("nan")}, {"label": "nan"}, {"reason": None}, {"reason": 5}]
    lines = [{"signature": run_signature(Manifest.load(manifest), config), "format": CHECKPOINT_FORMAT}]
    lines += [{"filename": name, "label": 0.3, "reason": "ok", "seconds": DAMAGED_SECONDS,
               "identity": video_identity(videos / name), "dropped": [], **change}
              for name, change in zip(DAMAGED_LINES, changes)]
    lines.append({**lines[1], "filename": 7, "label": 0.3})
    checkpoint_path(out).parent.mkdir(parents=True, exist_ok=True)
    checkpoint_path(out).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return list(DAMAGED_LINES)


# ------------------------------------------------------------------------------------------ bad settings

@dataclass
class Setup:
    """A folder for one `python -m kernel` call: a manifest beside links to the weights, and the flags."""

    folder: Path
    manifest: Path
    flags: dict[str, str]

    def edit_manifest(self, change: Callable[[dict], object]) -> None:
        data = json.loads(self.manifest.read_text())
        change(data)
        self.manifest.write_text(json.dumps(data))

    def first_model(self) -> dict:
        return json.loads(self.manifest.read_text())["models"][0]

    def use_stacker(self, stacker: dict | str) -> None:
        """Name a stacker JSON in the manifest (a dict is written as JSON, a string as it is)."""
        (self.folder / "stacker.json").write_text(stacker if isinstance(stacker, str) else json.dumps(stacker))
        self.edit_manifest(lambda data: data.update(stacker="stacker.json"))

    def write_config(self, config: dict) -> dict[str, str]:
        (self.folder / "config.json").write_text(json.dumps(config))
        return {"--config": str(self.folder / "config.json")}


def setup_for(folder: Path, manifest: Path, videos: Path, sample: Path) -> Setup:
    """A fresh folder whose manifest names links to `manifest`'s weight files (nothing large is copied)."""
    folder.mkdir(parents=True)
    data = json.loads(manifest.read_text())
    for entry in data["models"]:
        link = folder / entry["file"]
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((manifest.parent / entry["file"]).resolve())
    if data.get("stacker"):
        (folder / data["stacker"]).write_bytes((manifest.parent / data["stacker"]).read_bytes())
    (folder / "weights_manifest.json").write_text(json.dumps(data))
    flags = {"--videos": str(videos), "--sample-submission": str(sample), "--out": str(folder / "out.csv"),
             "--manifest": str(folder / "weights_manifest.json"), "--device": "cpu", "--frames": str(FRAMES)}
    return Setup(folder, folder / "weights_manifest.json", flags)


def nan_weights(setup: Setup) -> dict[str, str]:
    """The first model's weights with one NaN, and a manifest entry whose sha256 and size match them."""
    import torch

    from dfdc_core.manifest import manifest_entry

    entry = setup.first_model()
    path = setup.folder / entry["file"]
    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(key for key, tensor in state.items() if tensor.is_floating_point())
    state[name].view(-1)[0] = float("nan")
    path.unlink()  # the link: the original stays intact
    torch.save(state, path)
    fixed = manifest_entry(entry["name"], entry["arch"], path, setup.folder, entry["input_size"], entry["mean"],
                           entry["std"])
    setup.edit_manifest(lambda data: data["models"].__setitem__(0, {**entry, **fixed}))
    return {}


def stacker(text: str | None = None, **changes) -> Callable[[Setup], dict[str, str]]:
    """Arrangement: the manifest names a stacker: `text` as written, or a valid one-feature stacker for the
    first model with `changes`."""
    def arrange(setup: Setup) -> dict[str, str]:
        valid = {"feature_names": [f"{setup.first_model()['name']}.mean"], "coef": [1.0], "intercept": 0.0}
        setup.use_stacker(text if text is not None else {**valid, **changes})
        return {}
    return arrange


def manifest_text(text: str) -> Callable[[Setup], dict[str, str]]:
    def arrange(setup: Setup) -> dict[str, str]:
        setup.manifest.write_text(text)
        return {}
    return arrange


def set_entry(key: str, value) -> Callable[[Setup], dict[str, str]]:
    """Arrangement: the first manifest entry's `key` set to `value`."""
    def arrange(setup: Setup) -> dict[str, str]:
        setup.edit_manifest(lambda data: data["models"][0].__setitem__(key, value))
        return {}
    return arrange


def flag(name: str, value: str) -> Callable[[Setup], dict[str, str]]:
    return lambda setup: {name: value}


def sample_text(text: str) -> Callable[[Setup], dict[str, str]]:
    def arrange(setup: Setup) -> dict[str, str]:
        (setup.folder / "sample.csv").write_text(text)
        return {"--sample-submission": str(setup.folder / "sample.csv")}
    return arrange


def weights_holding(save: Callable[[Path], object]) -> Callable[[Setup], dict[str, str]]:
    """Arrangement: the first model's weight file replaced by what `save` writes, its sha256 and size matching."""
    def arrange(setup: Setup) -> dict[str, str]:
        from dfdc_core.manifest import manifest_entry

        entry = setup.first_model()
        path = setup.folder / entry["file"]
        path.unlink()  # the link: the original stays intact
        save(path)
        fixed = manifest_entry(entry["name"], entry["arch"], path, setup.folder, entry["input_size"])
        setup.edit_manifest(lambda data: data["models"].__setitem__(0, {**entry, **fixed}))
        return {}
    return arrange


def whole_model(path: Path) -> None:
    import torch

    from dfdc_core.models import create_classifier

    torch.save(create_classifier("test_efficientnet"), path)


def a_list(path: Path) -> None:
    import torch

    torch.save([torch.zeros(2)], path)


def out_at(name: str | Callable[[Setup], Path]) -> Callable[[Setup], dict[str, str]]:
    """Arrangement: `--out` at `name` in the case's folder, or at the path `name(setup)` gives."""
    return lambda setup: {"--out": str(setup.folder / name if isinstance(name, str) else name(setup))}


def beside_out(suffix: str) -> Callable[[Setup], dict[str, str]]:
    """Arrangement: a folder where the kernel writes the file `<out><suffix>`."""
    def arrange(setup: Setup) -> dict[str, str]:
        (setup.folder / f"out.csv{suffix}").mkdir()
        return {}
    return arrange


def empty_videos(setup: Setup) -> dict[str, str]:
    (setup.folder / "empty").mkdir()
    return {"--videos": str(setup.folder / "empty"), "--sample-submission": None}


def needs_no_cuda() -> str | None:
    import torch

    return "skipped: CUDA is present here" if torch.cuda.is_available() else None


@dataclass(frozen=True)
class SettingsCase:
    """One bad setting: how to arrange it (returns flags to change) and what the error message must contain."""

    name: str
    message: str
    arrange: Callable[[Setup], dict[str, str | None]]  # None: leave the flag out
    skip: Callable[[], str | None] = lambda: None


SETTINGS_CASES = (
    SettingsCase("stacker coefficient NaN", "not finite", stacker(coef=[float("nan")])),
    SettingsCase("stacker intercept inf", "not finite", stacker(intercept=float("inf"))),
    SettingsCase("manifest std [0, 0, 0]", "'std'", set_entry("std", [0, 0, 0])),
    SettingsCase("weights with NaN, sha256 correct", "NaN or infinite", nan_weights),
    SettingsCase("--prior nan", "'prior'", flag("--prior", "nan")),
    SettingsCase("--frames 0", "'frames'", flag("--frames", "0")),
    SettingsCase("--frames -5", "'frames'", flag("--frames", "-5")),
    SettingsCase("--max-frame-side 0", "'max_frame_side'", flag("--max-frame-side", "0")),
    SettingsCase("manifest input_size 0", "'input_size'", set_entry("input_size", 0)),
    SettingsCase("manifest input_size -224", "'input_size'", set_entry("input_size", -224)),
    SettingsCase("manifest input_size '224px'", "'input_size'", set_entry("input_size", "224px")),
    SettingsCase("manifest mean of 2 values", "'mean'", set_entry("mean", [0.5, 0.5])),
    SettingsCase("stacker features of no manifest model", "name no model", stacker(feature_names=["other.mean"])),
    SettingsCase("stacker aggregation 'median'", "aggregation", stacker(aggregation="median")),
    SettingsCase("config clip [0.99, 0.01]", "'clip'", lambda s: s.write_config({"clip": [0.99, 0.01]})),
    SettingsCase("--videos missing, sample present", "no such folder",
                 lambda s: {"--videos": str(s.folder / "no_such_folder")}),
    SettingsCase("sample_submission empty (0 bytes)", "cannot read it as CSV", sample_text("")),
    SettingsCase("sample_submission without 'filename'", "no 'filename' column",
                 sample_text("name,label\na.mp4,0.5\n")),
    SettingsCase("sample_submission with an empty filename", "empty filename", sample_text("filename,label\n,0.5\n")),
    SettingsCase("manifest top level a list", "top level", manifest_text("[]")),
    SettingsCase("manifest sha256 null", "'sha256'", set_entry("sha256", None)),
    SettingsCase("manifest arch unknown to timm", "not a model of timm", set_entry("arch", "resnet_no_such_model")),
    SettingsCase("stacker JSON malformed", "not valid JSON", stacker('{"coef": [1,')),
    SettingsCase("--device cuda without CUDA", "no CUDA", flag("--device", "cuda"), needs_no_cuda),
    SettingsCase("--config with an unknown key", "unknown keys ['frames_per_video']",
                 lambda s: s.write_config({"frames_per_video": 8})),
    SettingsCase("--out an existing folder", "is a folder", lambda s: {"--out": str(s.folder)}),
    SettingsCase("--out under a file (unwritable)", "cannot write",
                 lambda s: {"--out": str(s.manifest / "submission.csv")}),
    # issue 33 -- row 1: the decoding thread's in-flight mark cannot be written (it used to hang the run)
    SettingsCase("<out>.inflight.json a folder", "inflight.json is a folder", beside_out(".inflight.json")),
    # row 2: output-side OS errors, checked before the first video
    SettingsCase("<out>.summary.json a folder", "summary.json is a folder", beside_out(".summary.json")),
    SettingsCase("--out a 240-byte name", "its name is 240 bytes", out_at("s" * 236 + ".csv")),
    # row 3: inputs never destroyed nor silently replaced
    SettingsCase("--out the manifest", "would overwrite the input", lambda s: {"--out": str(s.manifest)}),
    SettingsCase("--out a video", "would overwrite the input",
                 out_at(lambda s: Path(s.flags["--videos"]) / "clip.mp4")),
    SettingsCase("--out the sample submission", "would overwrite the input",
                 out_at(lambda s: Path(s.flags["--sample-submission"]))),
    SettingsCase("--out the --config file", "would overwrite the input",
                 lambda s: {**s.write_config({}), "--out": str(s.folder / "config.json")}),
    SettingsCase("--sample-submission mistyped", "cannot read it (No such file",
                 lambda s: {"--sample-submission": str(s.folder / "sample_submision.csv")}),
    SettingsCase("--sample-submission a folder", "cannot read it (Is a directory",
                 lambda s: {"--sample-submission": str(s.folder)}),
    SettingsCase("--videos with no video, no sample", "no videos in it", empty_videos),
    SettingsCase("--videos without the sample's videos", "none of the 1 videos",
                 lambda s: {"--videos": str(s.folder)}),
    # row 4: manifest and stacker values of the wrong type or range
    SettingsCase("manifest classes 5", "'classes' is 5", set_entry("classes", 5)),
    SettingsCase("manifest real_class null", "'real_class' is None", set_entry("real_class", None)),
    SettingsCase("manifest std 1e-320", "at least 0.001", set_entry("std", [0.2, 1e-320, 0.2])),
    SettingsCase("manifest mean 1e308", "'mean' is [1e+308", set_entry("mean", [1e308, 0.5, 0.5])),
    SettingsCase("manifest input_size 100000", "at most 1024 pixels", set_entry("input_size", 100000)),
    SettingsCase("manifest tta_hflip 'yes'", "'tta_hflip' is 'yes'", set_entry("tta_hflip", "yes")),
    SettingsCase("stacker aggregation ['mean']", "aggregation ['mean']", stacker(aggregation=["mean"])),
    SettingsCase("stacker feature_names [5]", "'feature_names' is [5]", stacker(feature_names=[5])),
    SettingsCase("stacker with no features", "'feature_names' is []", stacker(feature_names=[], coef=[])),
    SettingsCase("stacker statistic unknown", "no statistic the kernel computes",
                 lambda s: stacker(feature_names=[f"{s.first_model()['name']}.median"])(s)),
    SettingsCase("stacker coef nested", "'coef' is [[1.0]]", stacker(coef=[[1.0]])),
    SettingsCase("stacker coef 1e308", "beyond", stacker(coef=[1e308])),
    # row 5: weight files whose sha256 matches but which hold no state_dict
    SettingsCase("weights a whole pickled model, sha256 correct", "refused unread", weights_holding(whole_model)),
    SettingsCase("weights a text file, sha256 correct", "is a text file",
                 weights_holding(lambda path: path.write_text("weights\n"))),
    SettingsCase("weights a list, sha256 correct", "holds a list", weights_holding(a_list)),
    # row 6: absurd numbers
    SettingsCase("--frames 2**63", "at most 1000", flag("--frames", str(2**63))),
    SettingsCase("config crop_margin 1e6", "'crop_margin' is 1000000.0",
                 lambda s: s.write_config({"crop_margin": 1e6})),
    SettingsCase("config still_pad 1e6", "'still_pad' is 1000000.0",
                 lambda s: s.write_config({"still_pad": 1e6})),
    SettingsCase("--classify-batch-size 10**9", "at most 1024", flag("--classify-batch-size", str(10**9))),
)


class ErrorLog(logging.Handler):
    """Collects the kernel's ERROR messages."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def files_under(folder: Path) -> dict[Path, tuple[int, int]]:
    """Every file under `folder` with its size and modification time: what a refused run must leave as it was."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def run_settings_case(case: SettingsCase, setup: Setup) -> Outcome:
    """`python -m kernel` (in this process) with one bad setting: exit 2, the message, and no file written or changed
    in the settings corpus (its videos, sample submission and every case's folder)."""
    from kernel.cli import main

    expected = f"exit 2: ...{case.message}..."
    if (reason := case.skip()) is not None:
        return Outcome(case.name, expected, reason, True)
    flags = {key: value for key, value in {**setup.flags, **case.arrange(setup)}.items() if value is not None}
    before = files_under(setup.folder.parent)
    errors = ErrorLog()
    logging.getLogger("kernel").addHandler(errors)
    start = time.perf_counter()
    try:
        code = main([item for pair in flags.items() for item in pair] + ["--no-progress"])
    finally:
        logging.getLogger("kernel").removeHandler(errors)
    message = " | ".join(errors.messages).replace(str(setup.folder), "<case>")
    written = files_under(setup.folder.parent) != before
    passed = code == 2 and case.message in message and not written
    got = f"exit {code}: {message}" + (" (and wrote output)" if written else "")
    return Outcome(case.name, expected, got, passed, seconds=time.perf_counter() - start)


def run_settings_corpus(work: Path, manifest: Path) -> list[Outcome]:
    """Every `SETTINGS_CASES` entry against a one-video folder, each in its own setup folder."""
    videos = work / "settings_videos"
    videos.mkdir(parents=True)
    faceless(videos / "clip.mp4")
    sample = work / "settings_sample.csv"
    sample.write_text("filename,label\nclip.mp4,0.5\n")
    return [run_settings_case(case, setup_for(work / f"setting_{number:02d}", manifest, videos, sample))
            for number, case in enumerate(SETTINGS_CASES)]


# ------------------------------------------------------------------------------------------ runner

def table(outcomes: list[Outcome]) -> str:
    """The outcomes as a fixed-width text table."""
    def cut(text: str, width: int) -> str:
        return text if len(text) <= width else text[:width - 1] + "…"

    rows = [("input", "expected", "outcome", "label", "seconds", "")]
    rows += [(cut(o.case, 44), cut(o.expected, 34), cut(o.got, 90), "" if o.label is None else f"{o.label:.3f}",
              f"{o.seconds:.2f}", "ok" if o.passed else "FAIL") for o in outcomes]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def run_selftest(work: Path, manifest: Path | None = None, device: str = "cpu") -> list[Outcome]:
    """The whole corpus: videos in one run, then each bad setting."""
    manifest = manifest or random_manifest(work / "random_models")
    return run_video_corpus(work / "video_corpus", manifest, device) + run_settings_corpus(work / "settings", manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernel.selftest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=None, help="weights_manifest.json (default: tiny random models)")
    parser.add_argument("--work", default=None, help="folder for the corpus (default: a temporary folder)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--verbose", action="store_true", help="show the kernel's log above the table")
    args = parser.parse_args(argv)
    shown = logging.StreamHandler()
    shown.setLevel(logging.INFO if args.verbose else logging.CRITICAL)  # records still reach `ErrorLog`
    logging.basicConfig(level=logging.INFO, handlers=[shown], format="%(levelname)s %(name)s: %(message)s")
    manifest = Path(args.manifest).resolve() if args.manifest else None
    with tempfile.TemporaryDirectory(prefix="kernel_selftest_") as temporary:
        work = Path(args.work or temporary) / "selftest"
        if work.exists():
            parser.error(f"{work} exists; pass an empty --work folder")
        outcomes = run_selftest(work, manifest, args.device)
    print(table(outcomes))
    failed = [o.case for o in outcomes if not o.passed]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} as expected" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
