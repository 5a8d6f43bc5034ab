"""Kernel speed benchmark: seconds per video for decode, detect and classify, against the 1st-place baseline.

Run from the repository root:

    .venv/bin/python -m bench.kernel_speed --limit 12 --min-short-side 720 --json runs/kernel_speed.json

What is measured, on the same videos:

* decode alone, per backend of `dfdc_core.video` (PyAV reference frames, decord, OpenCV), one video after another;
* OUR decode+detect as the kernel runs it: `kernel.pipeline.prefetch_frames` decodes the next videos in its
  background thread while `Scorer.find_tracks` (batched MTCNN on a downscaled copy, filter, tracks) works on
  the current one; the headline figure is the loop's wall time divided by the number of videos;
* classify: `Scorer.classify_crops` on the crops of the kept tracks, with randomly initialised timm models
  from `dfdc_core.models.create_classifier` (speed only);
* the BASELINE: a re-implementation (our own code) of the detection loop of Selim Seferbekov's 1st-place
  DFDC kernel (`kernel_utils.py` of selimsef/dfdc_deepfake_challenge): OpenCV `grab` over every frame from the
  first to the last sampled index and `retrieve` of the sampled ones, then facenet-pytorch MTCNN (margin 0,
  default min_face_size 20) called once per frame on a PIL copy resized to half size, boxes scaled back x2
  and crops taken with a third of the box as margin; decode and detection run one after the other.

"faces found" is the share of decoded frames with at least one face: for ours after `filter_detections`
(min score / min size; also given for the kept tracks), for the baseline any box MTCNN returns.
The dev videos are third-party data: they are read in place, never copied.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from bench.videos import DEV_VIDEOS, frame_size, select_videos
from dfdc_core import video as kvideo
from dfdc_core.config import parse_overrides
from dfdc_core.faces import face_crops
from dfdc_core.manifest import IMAGENET_MEAN, IMAGENET_STD, ModelSpec
from dfdc_core.models import create_classifier
from kernel.config import load_config
from kernel.pipeline import prefetch_frames
from kernel.scorer import LoadedModel, Scorer, available_cores

# kernel_utils.py's FaceExtractor uses [0.7, 0.8, 0.8] (his training-time face_detector.py [0.85, 0.95, 0.95]:
# --baseline-thresholds 0.85,0.95,0.95).
KERNEL_UTILS_THRESHOLDS = (0.7, 0.8, 0.8)


# ----------------------------------------------------------------------------------------------- videos


def load_labels(folder: Path) -> dict[str, str]:
    meta = folder / "metadata.json"
    if not meta.is_file():
        return {}
    return {name: entry["label"] for name, entry in json.loads(meta.read_text()).items()
            if isinstance(entry, dict) and entry.get("label") in ("REAL", "FAKE")}


# ------------------------------------------------------------------------------------------- baseline


def baseline_indices(frame_count: int, num_frames: int) -> np.ndarray:
    """Evenly spaced indices, truncated to int as the 1st-place reader does (np.linspace(..., dtype=int))."""
    return np.linspace(0, frame_count - 1, num_frames, endpoint=True).astype(np.int64)


def baseline_read(path: Path, num_frames: int) -> tuple[np.ndarray, list[int]] | None:
    """OpenCV reading as in the 1st-place kernel: grab every frame from the first to the last wanted
    index, retrieve (decode) only the wanted ones, BGR->RGB. None when nothing could be read."""
    capture = cv2.VideoCapture(str(path))
    try:
        frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if frame_count <= 0:
            return None
        wanted = baseline_indices(frame_count, num_frames)
        frames, read = [], []
        for index in range(int(wanted[0]), int(wanted[-1]) + 1):
            if not capture.grab():
                break
            if index == wanted[len(read)]:
                ok, frame = capture.retrieve()
                if not ok or frame is None:
                    break
                frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                read.append(index)
                if len(read) == len(wanted):
                    break
    finally:
        capture.release()
    return (np.stack(frames), read) if frames else None


class BaselineDetector:
    """Unbatched facenet-pytorch MTCNN on a half-size PIL copy of each frame, as in the 1st-place kernel."""

    def __init__(self, thresholds: tuple[float, float, float], device: str):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(margin=0, thresholds=list(thresholds), device=device)

    def faces_per_frame(self, frames: np.ndarray) -> list[int]:
        from PIL import Image

        counts = []
        for frame in frames:
            image = Image.fromarray(frame.astype(np.uint8))
            image = image.resize(size=[side // 2 for side in image.size])
            boxes, _ = self.mtcnn.detect(image, landmarks=False)
            crops = []
            if boxes is not None:
                for box in boxes:
                    x1, y1, x2, y2 = (int(v * 2) for v in box)
                    pad_h, pad_w = (y2 - y1) // 3, (x2 - x1) // 3
                    crops.append(frame[max(y1 - pad_h, 0):y2 + pad_h, max(x1 - pad_w, 0):x2 + pad_w])
            counts.append(len(crops))
        return counts


# ----------------------------------------------------------------------------------------------- ours


def patch_decord_threads(num_threads: int) -> None:
    """Benchmark-only experiment: make dfdc_core.video's decord backend open readers with `num_threads`."""
    def read_decord(path: Path, choose: kvideo.Chooser, max_side: int | None = None):
        import decord

        reader = decord.VideoReader(kvideo.local_file(path), ctx=decord.cpu(0), num_threads=num_threads)
        indices = choose(len(reader))
        if len(indices) == 0:
            raise kvideo.VideoReadError(f"{path}: decord found no frames")
        return np.stack([kvideo.fit_frame(frame, max_side) for frame in reader.get_batch(list(indices)).asnumpy()]), \
            indices

    kvideo.BACKENDS["decord"] = read_decord


def parse_arch(text: str) -> tuple[str, int]:
    arch, _, size = text.partition("@")
    return arch, int(size or 224)


def build_scorer(config: dict[str, Any], archs: list[str], device: str) -> Scorer:
    models = []
    for text in archs:
        arch, size = parse_arch(text)
        module = create_classifier(arch).to(device).eval()
        module = module.half() if device.startswith("cuda") else module.float()
        spec = ModelSpec(name=text, arch=arch, file=Path("random-init"), sha256="", bytes=-1, input_size=size,
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
        models.append(LoadedModel(spec, module))
    return Scorer(models, config, device)


class DetectionTap:
    """Wraps `scorer.detector.detect` to keep its last output, so faces found can be counted after filtering."""

    def __init__(self, scorer: Scorer):
        self.inner = scorer.detector.detect
        self.last = None
        scorer.detector.detect = self

    def __call__(self, frames):
        self.last = self.inner(frames)
        return self.last


@dataclass
class VideoFigures:
    name: str
    size: str
    label: str | None
    frames: int = 0
    decode: dict[str, float] = field(default_factory=dict)
    ours_decode_bg: float = float("nan")
    ours_detect: float = float("nan")
    ours_faces: int = 0
    ours_track_faces: int = 0
    crops: int = 0
    classify: float = float("nan")
    base_frames: int = 0
    base_decode: float = float("nan")
    base_detect: float = float("nan")
    base_faces: int = 0
    error: str | None = None


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", default=str(DEV_VIDEOS), help="folder of videos (default: the dev videos)")
    parser.add_argument("--names", nargs="+", default=None, help="these files of --videos, in this order")
    parser.add_argument("--limit", type=int, default=None, help="at most N videos")
    parser.add_argument("--include-crops", action="store_true", help="include the 256x256 dfdccrop_* clips")
    parser.add_argument("--min-short-side", type=int, default=0,
                        help="only videos whose shorter side is at least this (720: the HD full-frame ones)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled per video")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch.set_num_threads (default: cores)")
    parser.add_argument("--archs", nargs="*", default=["efficientnet_b0@224"],
                        help="classifiers as timm_name@input_size, random init (none: skip classify)")
    parser.add_argument("--config", default=None, help="kernel config JSON overriding default_config.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="kernel config override, e.g. --set detect_long_side=384 (repeatable)")
    parser.add_argument("--decord-threads", type=int, default=None,
                        help="experiment: decord num_threads (kernel uses 1); patched in the benchmark only")
    parser.add_argument("--decode-backends", nargs="*", default=list(kvideo.BACKENDS),
                        help="backends timed in the decode-only pass (none: skip it)")
    parser.add_argument("--baseline-thresholds", default=",".join(map(str, KERNEL_UTILS_THRESHOLDS)),
                        help="baseline MTCNN thresholds (kernel_utils.py: 0.7,0.8,0.8; "
                             "his preprocessing: 0.85,0.95,0.95)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the 1st-place baseline")
    parser.add_argument("--baseline-from", default=None, metavar="JSON",
                        help="reuse the baseline figures of an earlier --json run (same videos, frames, "
                             "thresholds, threads) instead of re-running it: it is the slow part")
    parser.add_argument("--json", default=None, help="write all figures to this JSON file")
    return parser.parse_args(argv)


def mean(values) -> float:
    values = [v for v in values if v == v]
    return float(np.mean(values)) if values else float("nan")


def share(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def time_decoders(folder: Path, names: list[str], figures: dict[str, VideoFigures], frames: int,
                  backends: list[str]) -> None:
    """Phase 1: decode alone, per backend."""
    for backend in backends:
        for name in tqdm(names, desc=f"decode {backend}", unit="video"):
            start = time.perf_counter()
            try:
                kvideo.read_frames(folder / name, frames, (backend,))
                figures[name].decode[backend] = time.perf_counter() - start
            except Exception as error:  # recorded, the video stays in the other passes
                figures[name].decode[backend] = float("nan")
                figures[name].error = f"{backend}: {error}"


def time_kernel_loop(folder: Path, names: list[str], figures: dict[str, VideoFigures], config: dict[str, Any],
                     scorer: Scorer, device: str) -> tuple[dict[str, list[np.ndarray]], float]:
    """Phase 2, ours: the kernel's loop, decode prefetched in the background thread, detection in the foreground.
    Returns each video's crops and the loop's wall seconds."""
    tap = DetectionTap(scorer)
    crops_by_video: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(names), desc="ours decode+detect", unit="video")
    loop_start = time.perf_counter()
    for name, frames, decode_s, _ in prefetch_frames(folder, names, config, threading.Event()):
        fig = figures[name]
        fig.ours_decode_bg = decode_s
        if isinstance(frames, Exception):
            fig.error = str(frames)
        else:
            start = time.perf_counter()
            tracks = scorer.find_tracks(frames)
            sync(device)
            fig.ours_detect = time.perf_counter() - start
            fig.frames = len(frames)
            fig.ours_faces = sum(1 for dets in _filtered(tap.last, config) if dets)
            fig.ours_track_faces = len({d.frame for t in tracks for d in t.detections})
            crops_by_video[name] = [crop.copy() for crop in face_crops(frames, tracks, config["crop_margin"])]
            fig.crops = len(crops_by_video[name])
        bar.update(1)
    loop_wall = time.perf_counter() - loop_start
    bar.close()
    return crops_by_video, loop_wall


def time_classifiers(names: list[str], figures: dict[str, VideoFigures], crops_by_video: dict[str, list[np.ndarray]],
                     scorer: Scorer, device: str) -> None:
    """Phase 3: classify the crops of the kept tracks."""
    first = next(iter(crops_by_video.values()))
    if first:
        scorer.classify_crops(first[:2])  # warm-up
    for name in tqdm(names, desc="classify", unit="video"):
        crops = crops_by_video.get(name)
        if not crops:
            continue
        start = time.perf_counter()
        scorer.classify_crops(crops)
        sync(device)
        figures[name].classify = time.perf_counter() - start


def time_baseline(folder: Path, names: list[str], figures: dict[str, VideoFigures], frames: int,
                  thresholds: tuple[float, ...], device: str, warm: np.ndarray) -> None:
    """Phase 4: the 1st-place baseline, sequential decode then per-frame detection."""
    baseline = BaselineDetector(thresholds, device)
    baseline.faces_per_frame(warm[:1])
    for name in tqdm(names, desc="baseline", unit="video"):
        fig = figures[name]
        start = time.perf_counter()
        result = baseline_read(folder / name, frames)
        fig.base_decode = time.perf_counter() - start
        if result is None:
            continue
        start = time.perf_counter()
        counts = baseline.faces_per_frame(result[0])
        sync(device)
        fig.base_detect = time.perf_counter() - start
        fig.base_frames = len(result[0])
        fig.base_faces = sum(1 for c in counts if c)


def video_figures(folder: Path, names: list[str]) -> dict[str, VideoFigures]:
    """An empty figures record per video (frame size, label); each file read once so the page cache is warm for every
    pipeline alike."""
    labels = load_labels(folder)
    figures = {}
    for name in names:
        width, height, _ = frame_size(folder / name)
        figures[name] = VideoFigures(name, f"{width}x{height}", labels.get(name))
        (folder / name).read_bytes()
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    folder = Path(args.videos)
    if not folder.is_dir():
        raise SystemExit(f"--videos {folder}: no such folder")
    config = load_config(args.config, frames=args.frames, **parse_overrides(args.set))
    if args.decord_threads is not None:
        patch_decord_threads(args.decord_threads)
    names = select_videos(folder, args.names, args.include_crops, args.min_short_side, args.limit)
    if not names:
        raise SystemExit(f"no videos selected in {folder}")
    figures = video_figures(folder, names)
    print(f"{len(names)} videos from {folder}, {args.frames} frames, device {args.device}, "
          f"torch threads {torch.get_num_threads()}, cores {available_cores()}", file=sys.stderr)
    scorer = build_scorer(config, args.archs, args.device)
    warm = kvideo.read_frames(folder / names[0], 4, tuple(config["decode_backends"]))[0]
    scorer.find_tracks(warm)  # first-call set-up out of the timings
    time_decoders(folder, names, figures, args.frames, args.decode_backends)
    crops_by_video, loop_wall = time_kernel_loop(folder, names, figures, config, scorer, args.device)
    if args.archs and crops_by_video:
        time_classifiers(names, figures, crops_by_video, scorer, args.device)
    base_thresholds = tuple(float(v) for v in args.baseline_thresholds.split(","))
    if args.baseline_from:
        reuse_baseline(Path(args.baseline_from), figures, args.frames, base_thresholds)
    elif not args.no_baseline:
        time_baseline(folder, names, figures, args.frames, base_thresholds, args.device, warm)
    result = summarise(args, config, names, figures, loop_wall, base_thresholds)
    result["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    return result


def reuse_baseline(path: Path, figures: dict[str, VideoFigures], frames: int,
                   thresholds: tuple[float, ...]) -> None:
    earlier = json.loads(path.read_text())
    if earlier["frames"] != frames or tuple(earlier["baseline_thresholds"]) != thresholds:
        raise SystemExit(f"{path}: baseline was run with {earlier['frames']} frames, thresholds "
                         f"{earlier['baseline_thresholds']}; this run wants {frames}, {list(thresholds)}")
    rows = {row["name"]: row for row in earlier["per_video"]}
    missing = sorted(set(figures) - set(rows))
    if missing:
        raise SystemExit(f"{path}: no baseline figures for {missing}")
    for name, fig in figures.items():
        for key in ("base_frames", "base_decode", "base_detect", "base_faces"):
            setattr(fig, key, rows[name][key])
    print(f"baseline figures reused from {path} (torch threads {earlier['torch_threads']})", file=sys.stderr)


def _filtered(per_frame, config):
    from dfdc_core.faces import filter_detections

    return filter_detections(per_frame or [], config["min_face_score"], config["min_face_px"])


def summarise(args, config, names, figures, loop_wall, base_thresholds) -> dict[str, Any]:
    figs = [figures[n] for n in names]
    ok = [f for f in figs if f.frames]
    n = len(names)
    labelled = [f for f in ok if f.label]
    stages = {
        **{f"decode_{backend}": mean(f.decode.get(backend, float("nan")) for f in figs)
           for backend in args.decode_backends},
        "ours_decode_in_loop": mean(f.ours_decode_bg for f in figs),
        "ours_detect": mean(f.ours_detect for f in figs),
        "ours_loop": loop_wall / n,
        "classify": mean(f.classify for f in figs),
        "base_decode": mean(f.base_decode for f in figs),
        "base_detect": mean(f.base_detect for f in figs),
    }
    stages["base_decode_detect"] = stages["base_decode"] + stages["base_detect"]
    faces = {
        "ours_filtered": share(sum(f.ours_faces for f in ok), sum(f.frames for f in ok)),
        "ours_tracks": share(sum(f.ours_track_faces for f in ok), sum(f.frames for f in ok)),
        "base": share(sum(f.base_faces for f in ok), sum(f.base_frames for f in ok)),
        "ours_filtered_labelled": share(sum(f.ours_faces for f in labelled), sum(f.frames for f in labelled)),
        "ours_tracks_labelled": share(sum(f.ours_track_faces for f in labelled),
                                      sum(f.frames for f in labelled)),
        "base_labelled": share(sum(f.base_faces for f in labelled), sum(f.base_frames for f in labelled)),
        "ours_min_video_labelled": min((share(f.ours_faces, f.frames) for f in labelled), default=float("nan")),
    }
    first_backend = stages.get(f"decode_{config['decode_backends'][0]}", float("nan"))
    ratios = {
        "decode_detect": stages["base_decode_detect"] / stages["ours_loop"],
        "decode": stages["base_decode"] / first_backend,
        "detect": stages["base_detect"] / stages["ours_detect"],
    }
    return {
        "videos_dir": str(args.videos), "videos": names, "frames": args.frames, "device": args.device,
        "torch_threads": torch.get_num_threads(), "cores": available_cores(), "archs": args.archs,
        "decord_threads": args.decord_threads if args.decord_threads is not None else 1,
        "baseline_thresholds": list(base_thresholds), "baseline_from": args.baseline_from,
        "config": {k: config[k] for k in ("detect_long_side", "mtcnn_min_face_size", "mtcnn_thresholds",
                                          "detect_batch_size", "prefetch_videos", "min_face_score",
                                          "min_face_px", "decode_backends")},
        "env": {"python": platform.python_version(), "torch": torch.__version__, "cv2": cv2.__version__},
        "seconds_per_video": stages, "faces_found_share": faces, "ratios": ratios, "target_ratio": 3.0,
        "decode_backends_timed": list(args.decode_backends), "per_video": [f.__dict__ for f in figs],
    }


def fmt(seconds: float) -> str:
    return "    -" if seconds != seconds else f"{seconds:6.2f}"


def pct(value: float) -> str:
    return "   -" if value != value else f"{100 * value:5.1f}%"


def verdict(ratio: float) -> str:
    if np.isnan(ratio):
        return "no baseline measured"
    return "MET" if ratio >= 3.0 else "NOT MET"


def print_report(result: dict[str, Any]) -> None:
    s, f, r = result["seconds_per_video"], result["faces_found_share"], result["ratios"]
    cfg = result["config"]
    print(f"\nkernel_speed: {len(result['videos'])} videos, {result['frames']} frames, {result['device']}, "
          f"torch threads {result['torch_threads']} of {result['cores']} cores, decord threads "
          f"{result['decord_threads']}; 1-min load average {result['load_average_before_after'][0]} before, "
          f"{result['load_average_before_after'][1]} after (other processes on these cores skew timings)")
    print(f"ours: detect_long_side {cfg['detect_long_side']}, min_face_size {cfg['mtcnn_min_face_size']}, "
          f"thresholds {cfg['mtcnn_thresholds']}, batch {cfg['detect_batch_size']}, prefetch "
          f"{cfg['prefetch_videos']}; baseline: half scale, min_face_size 20, thresholds "
          f"{result['baseline_thresholds']}\n")
    timed = result["decode_backends_timed"]
    print("per video (s)                  size       frames " + "".join(f"{'dec:' + b:>11s}" for b in timed)
          + "  ours:detect faces | base:decode base:detect faces")
    for v in result["per_video"]:
        print(f"  {v['name'][:28]:28s} {v['size']:>10s} {v['frames']:5d} "
              + "".join(f"     {fmt(v['decode'].get(b, float('nan')))}" for b in timed)
              + f"       {fmt(v['ours_detect'])}  "
              f"{pct(share(v['ours_faces'], v['frames']))} |     {fmt(v['base_decode'])}      "
              f"{fmt(v['base_detect'])}  {pct(share(v['base_faces'], v['base_frames']))}"
              + (f"  [{v['error']}]" if v["error"] else ""))
    print()
    print(f"{'stage (s/video)':44s} {'ours':>8s} {'baseline':>9s} {'ratio':>7s}")
    first = cfg["decode_backends"][0]
    print(f"{'decode alone: ' + first + ' (kernel first) | grab/retrieve':44s} "
          f"{fmt(s.get('decode_' + first, float('nan'))):>8s} {fmt(s['base_decode']):>9s} {r['decode']:6.2f}x")
    for backend in timed:
        if backend != first:
            print(f"{'decode alone: ' + backend + ' backend':44s} {fmt(s['decode_' + backend]):>8s}")
    print(f"{'decode in prefetch thread (overlapped)':44s} {fmt(s['ours_decode_in_loop']):>8s}")
    print(f"{'detect (ours batched MTCNN | per-frame)':44s} {fmt(s['ours_detect']):>8s} "
          f"{fmt(s['base_detect']):>9s} {r['detect']:6.2f}x")
    print(f"{'DECODE+DETECT (ours: prefetch loop wall/n)':44s} {fmt(s['ours_loop']):>8s} "
          f"{fmt(s['base_decode_detect']):>9s} {r['decode_detect']:6.2f}x   (target >= 3.00x: "
          f"{verdict(r['decode_detect'])})")
    print(f"{'classify ' + ','.join(result['archs']):44s} {fmt(s['classify']):>8s}")
    classify = s["classify"] if s["classify"] == s["classify"] else 0  # NaN without classifiers
    print(f"{'ours loop + classify (kernel estimate)':44s} {fmt(s['ours_loop'] + classify):>8s}")
    print()
    print(f"{'faces found (frames with >=1 face)':44s} {'ours':>8s} {'baseline':>9s}")
    print(f"{'  all videos':44s} {pct(f['ours_filtered']):>8s} {pct(f['base']):>9s}   "
          f"(ours in kept tracks {pct(f['ours_tracks'])})")
    print(f"{'  labelled videos':44s} {pct(f['ours_filtered_labelled']):>8s} {pct(f['base_labelled']):>9s}   "
          f"(ours in kept tracks {pct(f['ours_tracks_labelled'])}, worst video "
          f"{pct(f['ours_min_video_labelled'])})")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    result = run(args)
    print_report(result)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=float))
        print(f"\nfigures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
