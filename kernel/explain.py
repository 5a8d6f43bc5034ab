"""`python -m kernel.explain PATH`: why a video or image was called fake.

Scores PATH exactly as the kernel does (same frames, detector, tracks, crops, models, aggregation and
stacker) and writes OUT/<stem>_explain.json (video score, per-person and per-face scores) and
OUT/<stem>_explain.png: one row per shown frame, the frame with its face boxes and per-face scores, then
each face crop under each model with its Grad-CAM overlay. Grad-CAM (the `grad-cam` package) explains
the logit of P(fake): the single output of a one-logit model, or log(sum of fake-class exps) - real
logit of a multi-class one (`dfdc_core.models.fake_logit`), at the last feature layer of each family
(`CAM_LAYERS`). An image is searched for faces, or taken as one face crop with `--crop`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfdc_core.aggregate import person_scores
from dfdc_core.config import SettingsError, writable_folder
from dfdc_core.faces import Detection, Track, model_images, normalise
from dfdc_core.io import write_atomic
from dfdc_core.manifest import Manifest, ManifestError, model_family
from dfdc_core.models import fake_logit
from dfdc_core.plots import pyplot, save_figure
from dfdc_core.video import IMAGE_SUFFIXES, VideoReadError, decode_video, is_image, read_image
from kernel.checks import check_config, check_device, check_not_an_input
from kernel.config import load_config
from kernel.device import choose_device
from kernel.scorer import LoadedModel, NoFaceError, Scorer, VideoPrediction, load_scorer
from kernel.submission import clip_probs

CAM_LAYERS = {"efficientnet": "bn2", "resnet": "layer4", "xception": "act4"}  # last layer of forward_features
CAM_BATCH = 8


class ExplainError(RuntimeError):
    """PATH cannot be explained (unreadable, or no face); the message names the file."""


@dataclass
class Explanation:
    """One scored input with everything needed to show it."""

    path: Path
    kind: str  # "video", "image" or "crop"
    frames: np.ndarray
    frame_numbers: np.ndarray
    prediction: VideoPrediction
    label: float  # the score clipped as the kernel writes it to the submission


def whole_image_track(frames: np.ndarray) -> list[Track]:
    """One person whose face crop is the whole (single) frame: for inputs that already are a face crop (scored
    as they are, with no margin added)."""
    height, width = frames.shape[1:3]
    return [Track(person=0, detections=[Detection(0, (0.0, 0.0, float(width), float(height)), 1.0)])]


def decode_input(path: Path, config: dict[str, Any], as_crop: bool) -> tuple[str, np.ndarray, np.ndarray]:
    """`(kind, frames, frame numbers)`: a face crop as it is, an image as the kernel's one padded frame
    (`read_still`), anything else as a video."""
    if as_crop:
        return "image", read_image(path), np.zeros(1, dtype=np.int64)
    return "image" if is_image(path) else "video", *decode_video(path, config)


def explain(path: str | Path, scorer: Scorer, as_crop: bool = False) -> Explanation:
    """Score `path` with the kernel's scorer; `as_crop` takes an image as one face crop."""
    path = Path(path)
    if as_crop and path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ExplainError(f"{path}: --crop needs an image ({', '.join(IMAGE_SUFFIXES)})")
    try:
        kind, frames, numbers = decode_input(path, scorer.config, as_crop)
    except VideoReadError as error:
        raise ExplainError(str(error)) from error
    if as_crop:
        kind, prediction = "crop", scorer.score_crops([frames[0]], whole_image_track(frames))
    else:
        try:
            prediction = scorer.score(frames)
        except NoFaceError as error:
            hint = "; if it is a face crop, pass --crop" if kind == "image" else ""
            raise ExplainError(f"{path}: {error} ({len(frames)} frame(s) searched){hint}") from error
    label = float(clip_probs(prediction.score, tuple(scorer.config["clip"])))
    return Explanation(path, kind, frames, numbers, prediction, label)


def cam_layer(model: LoadedModel) -> torch.nn.Module:
    """The Grad-CAM target layer of a model: its family's last feature layer."""
    return model.module.get_submodule(CAM_LAYERS[model_family(model.spec.arch)])


class FakeLogitTarget:
    """Grad-CAM target: the logit of P(fake) of one output row (see `dfdc_core.models.fake_logit`)."""

    def __init__(self, real_index: int):
        self.real_index = real_index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return fake_logit(output.float()[None], self.real_index)[0]


def cam_overlays(model: LoadedModel, crops: list[np.ndarray]) -> list[np.ndarray]:
    """Each crop as the model sees it (resized and padded) with its Grad-CAM heat map blended in (RGB uint8)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    spec, dtype = model.spec, next(model.module.parameters()).dtype
    overlays = []
    with GradCAM(model=model.module, target_layers=[cam_layer(model)]) as cam:
        for start in range(0, len(crops), CAM_BATCH):
            images = model_images(crops[start:start + CAM_BATCH], spec.input_size)
            tensor = normalise(images, spec.mean, spec.std).to(dtype)
            masks = cam(input_tensor=tensor, targets=[FakeLogitTarget(spec.real_index)] * len(images))
            overlays += [show_cam_on_image(image.astype(np.float32) / 255.0, mask, use_rgb=True)
                         for image, mask in zip(images, masks)]
    return overlays


def face_rows(explanation: Explanation) -> list[dict[str, Any]]:
    """One entry per face crop (in `prediction.crops` order): frame, person, box and P(fake) per model."""
    prediction, rows = explanation.prediction, []
    for track in prediction.tracks:
        for detection in track.detections:
            index = len(rows)
            rows.append({"sample": detection.frame, "frame": int(explanation.frame_numbers[detection.frame]),
                         "person": track.person, "box": [round(v, 1) for v in detection.box],
                         "detector_score": round(detection.score, 5),
                         "probs": {name: float(probs[index]) for name, probs in prediction.face_probs.items()}})
    return rows


def report(explanation: Explanation, scorer: Scorer) -> dict[str, Any]:
    """The JSON written beside the PNG."""
    prediction, strategy = explanation.prediction, scorer.config["aggregation"]
    persons = {name: person_scores(pp, strategy) for name, pp in prediction.person_probs.items()}
    return {
        "path": str(explanation.path), "kind": explanation.kind, "label": explanation.label,
        "score": prediction.score, "combined_by": "stacker" if scorer.stacker is not None else "mean of models",
        "aggregation": strategy, "frames_sampled": len(explanation.frames), "model_scores": prediction.model_scores,
        "persons": [{"person": track.person, "faces": len(track.detections),
                     "scores": {name: scores[track.person] for name, scores in persons.items()}}
                    for track in prediction.tracks],
        "faces": face_rows(explanation),
        "models": [{"name": m.spec.name, "arch": m.spec.arch, "num_classes": m.spec.num_classes,
                    "cam_layer": CAM_LAYERS[model_family(m.spec.arch)]} for m in scorer.models],
        "features": prediction.features,
    }


def shown_samples(faces: list[dict[str, Any]], rows: int) -> list[int]:
    """Up to `rows` sampled frames that have faces, evenly spread."""
    samples = sorted({face["sample"] for face in faces})
    picks = np.unique(np.linspace(0, len(samples) - 1, min(rows, len(samples))).round().astype(int))
    return [samples[i] for i in picks]


def plot_grid(explanation: Explanation, faces: list[dict[str, Any]], overlays: dict[str, dict[int, np.ndarray]],
              path: Path) -> Path:
    """Rows of [frame with boxes and per-face scores | each face's CAM overlay under each model]."""
    plt = pyplot()
    shown = sorted(next(iter(overlays.values())))
    samples = sorted({faces[i]["sample"] for i in shown})
    per_row = [[i for i in shown if faces[i]["sample"] == sample] for sample in samples]
    models = list(overlays)
    height, width = explanation.frames.shape[1:3]
    columns = 1 + max(len(row) for row in per_row) * len(models)
    size = (2.4 * (columns - 1) + 3.2 * width / height, 2.6 * len(samples) + 0.6)
    figure, axes = plt.subplots(len(samples), columns, squeeze=False, figsize=size, layout="constrained",
                                gridspec_kw={"width_ratios": [width / height] + [1] * (columns - 1)})
    colours = plt.get_cmap("tab10")
    for axis_row, sample, row in zip(axes, samples, per_row):
        for axis in axis_row:
            axis.axis("off")
        axis_row[0].imshow(explanation.frames[sample])
        axis_row[0].set_title(f"frame {faces[row[0]]['frame']}", fontsize=9)
        for column, index in enumerate(row):
            face = faces[index]
            x1, y1, x2, y2 = face["box"]
            colour = colours(face["person"] % 10)
            axis_row[0].add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=2))
            axis_row[0].text(x1, y1, f"p{face['person']} {np.mean(list(face['probs'].values())):.2f}",
                             color="white", fontsize=8, va="bottom", bbox={"color": colour, "pad": 1})
            for offset, model in enumerate(models):
                axis = axis_row[1 + column * len(models) + offset]
                axis.imshow(overlays[model][index])
                axis.set_title(f"p{face['person']} {model}\nP(fake) {face['probs'][model]:.3f}", fontsize=8)
    figure.suptitle(f"{explanation.path.name}: P(fake) {explanation.label:.3f} "
                    f"(box labels: mean of models per face)", fontsize=11)
    return save_figure(figure, path, dpi=80)


def write_explanation(explanation: Explanation, scorer: Scorer, out_dir: Path, rows: int = 8) -> tuple[Path, Path]:
    """DIR/<stem>_explain.json and DIR/<stem>_explain.png (Grad-CAM of the faces of up to `rows` frames)."""
    data = report(explanation, scorer)
    shown = set(shown_samples(data["faces"], rows))
    indices = [i for i, face in enumerate(data["faces"]) if face["sample"] in shown]
    crops = [explanation.prediction.crops[i] for i in indices]
    overlays = {m.spec.name: dict(zip(indices, cam_overlays(m, crops))) for m in scorer.models}
    stem = explanation.path.stem
    png = plot_grid(explanation, data["faces"], overlays, out_dir / f"{stem}_explain.png")
    json_path = out_dir / f"{stem}_explain.json"
    write_atomic(json_path, json.dumps(data, indent=1) + "\n")
    return png, json_path


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernel.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="a video, or an image (face photo, or a face crop with --crop)")
    parser.add_argument("--manifest", type=Path, default=Path("weights_manifest.json"), help="weights_manifest.json")
    parser.add_argument("--out", type=Path, default=Path("runs/explain"), help="folder for the PNG and JSON")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--config", default=None, help="JSON overriding kernel/default_config.json")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled per video (kernel default 32)")
    parser.add_argument("--crop", action="store_true", help="the image is a face crop: score it whole")
    parser.add_argument("--rows", type=positive_int, default=8,
                        help="frames shown in the PNG (the JSON has every face)")
    return parser.parse_args(argv)


def checked_scorer(args: argparse.Namespace) -> Scorer:
    """The kernel's checks of the config, device, input file and manifest (as `python -m kernel` makes them), then
    its scorer; `SettingsError`, `ManifestError` or `ExplainError` naming what is wrong."""
    config = load_config(args.config, frames=args.frames)
    check_config(config)
    check_device(args.device)
    if not os.path.isfile(args.path):
        raise ExplainError(f"{args.path}: no such file")
    written = [args.out / f"{args.path.stem}_explain{suffix}" for suffix in (".png", ".json")]
    check_not_an_input(args.out, [args.path, args.manifest] + ([Path(args.config)] if args.config else []), written)
    return load_scorer(Manifest.load(args.manifest), config, choose_device(args.device).device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scorer = checked_scorer(args)
        explanation = explain(args.path, scorer, args.crop)
        writable_folder(args.out, "--out", args.out)
        png, json_path = write_explanation(explanation, scorer, args.out, args.rows)
    except (ExplainError, ManifestError, SettingsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    prediction = explanation.prediction
    print(f"{args.path}: P(fake) {explanation.label:.4f} ({len(prediction.crops)} faces, {len(prediction.tracks)} "
          f"person(s)); wrote {png} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
