"""How the manifest's models hold up under upload noise and white-box attacks, and what noise costs the detector.

    python -m training.robustness --manifest M --crops CROPS/index.csv --out DIR [--folds F --fold K]
        [--videos V [V ...]] [--config training/configs/robustness.yaml] [--models NAME ...] [--max-crops N]

For every model: the face crops clean and under each perturbation of `training/data/perturb.py` at weak /
medium / strong (applied to the model-sized crop, as training augmentation is), then FGSM and PGD pushing
the fake crops toward "real" at each eps. With --videos, the same perturbations on decoded frames before
face detection, counting the faces the kernel's detector loses. Writes to DIR (atomically): report.txt,
perturbations.csv, heatmap_MODEL.png, attacks.csv, attacks.png and, with --videos, video_faces.csv and
video_faces.png. Models run in float32 (the kernel runs fp16 on GPU) so attack gradients are exact.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfdc_core.config import load_settings, save_resolved
from dfdc_core.faces import box_iou, detector_from_config, person_tracks
from dfdc_core.io import write_atomic
from dfdc_core.manifest import Manifest, ModelSpec, verify_manifest
from dfdc_core.metrics import accuracy, auc, log_loss
from dfdc_core.models import load_classifier
from dfdc_core.plots import pyplot, save_figure
from dfdc_core.video import VideoReadError, decode_video
from kernel.config import load_config
from kernel.submission import VIDEO_SUFFIXES
from training.data.dataset import CropDataset
from training.data.index import read_index
from training.data.perturb import (
    LEVELS,
    PARAMETERS,
    STRENGTHS,
    apply,
    fixed,
    image_seed,
    strengths_table,
)
from training.engine.evaluate import load_fold_rows, predict_logits, video_probs
from training.tools.attacks import PixelModel, attack_toward

log = logging.getLogger("robustness")

DEFAULT_SETTINGS = Path(__file__).parents[1] / "configs" / "robustness.yaml"
PERTURBATION_COLUMNS = ["model", "perturbation", "strength", "parameter", "value", "crops", "log_loss", "auc",
                        "acc_real", "acc_fake", "video_log_loss", "video_auc"]
ATTACK_COLUMNS = ["model", "attack", "eps", "eps_pixels", "steps", "step_size", "fakes", "detected", "success_rate",
                  "clean_acc_fake", "robust_acc_fake", "clean_accuracy", "robust_accuracy", "fake_log_loss_clean",
                  "fake_log_loss_adv"]
VIDEO_COLUMNS = ["video", "perturbation", "strength", "frames", "faces_clean", "faces", "lost", "lost_share",
                 "persons_clean", "persons"]
PIXELS = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # crops loaded as [0, 1] pixels; PixelModel normalises


# ---------------------------------------------------------------- inputs


def robustness_settings(path: Path | None) -> dict[str, Any]:
    """`training/configs/robustness.yaml`, overridden by the keys of `path`."""
    settings = load_settings(DEFAULT_SETTINGS, path)
    bad = sorted(set(settings["perturbations"]) - set(STRENGTHS))
    if bad:
        raise KeyError(f"{path}: unknown perturbations {bad}; known: {list(STRENGTHS)}")
    return settings


def index_path(crops: Path) -> Path:
    """The index.csv of extract_faces.py, given it or its folder."""
    path = crops / "index.csv" if crops.is_dir() else crops
    if path.name != "index.csv":
        raise ValueError(f"--crops {crops}: pass the index.csv written by extract_faces.py (or its folder)")
    return path


def evaluation_rows(index: Path, folds: Path | None, fold: int | None, max_crops: int | None,
                    seed: int) -> pd.DataFrame:
    """Crops to evaluate: all of the index, or fold `fold`'s (validation) videos; at most `max_crops`, balanced."""
    if (folds is None) != (fold is None):
        raise ValueError("--folds and --fold go together: evaluate one validation fold, or neither for every crop")
    rows = read_index(index) if folds is None else load_fold_rows(
        {"crops": index.parent, "folds": folds, "num_classes": 1}, fold)[1]
    if max_crops is not None and len(rows) > max_crops:
        per_label = max(1, max_crops // rows["label"].nunique())
        rows = pd.concat([group.sample(min(len(group), per_label), random_state=seed)
                          for _, group in rows.groupby("label")]).sort_index()
    if rows.empty:
        raise ValueError(f"{index}: no crops to evaluate; check --folds/--fold")
    if rows["label"].nunique() < 2:
        log.warning("only label %s among the crops: AUC is undefined", rows["label"].iloc[0])
    return rows.reset_index(drop=True)


def select_models(manifest: Path, names: list[str] | None) -> list[ModelSpec]:
    """The manifest's models (verified), or those named."""
    loaded = Manifest.load(manifest)
    verify_manifest(loaded)
    available = [spec.name for spec in loaded.models]
    missing = sorted(set(names or []) - set(available))
    if missing:
        raise KeyError(f"--models {missing} not in {manifest}; it has {available}")
    return [spec for spec in loaded.models if not names or spec.name in names]


def video_files(paths: list[Path], limit: int | None) -> list[Path]:
    """Video files among `paths` (folders are listed, sorted), at most `limit`."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"--videos {path}: no such file or folder")
    return found[:limit]


# ---------------------------------------------------------------- crops: perturbation matrix


def loader_of(rows: pd.DataFrame, root: Path, spec: ModelSpec, settings: dict[str, Any],
              perturbation=None) -> DataLoader:
    """[0, 1] pixel crops at the model's input size, perturbed per crop with (seed, crop) draws when given."""
    dataset = CropDataset(rows, root, spec.input_size, *PIXELS, augmentation=perturbation, seed=settings["seed"])
    return DataLoader(dataset, batch_size=settings["batch_size"], num_workers=settings["num_workers"], shuffle=False)


def scores(rows: pd.DataFrame, probs: np.ndarray, aggregation: str) -> dict[str, float]:
    """Crop-level log loss (clipped as the kernel), AUC and accuracy per class; video-level log loss and AUC."""
    labels = rows["label"].to_numpy()
    videos = video_probs(rows, probs, aggregation)
    return {"crops": len(labels), "log_loss": log_loss(labels, probs), "auc": auc(labels, probs),
            "acc_real": accuracy(labels[labels == 0], probs[labels == 0]) if (labels == 0).any() else np.nan,
            "acc_fake": accuracy(labels[labels == 1], probs[labels == 1]) if (labels == 1).any() else np.nan,
            "video_log_loss": log_loss(videos["label"], videos["prob"]), "video_auc": auc(videos["label"],
                                                                                             videos["prob"])}


def probabilities(model: PixelModel, loader: DataLoader, device: torch.device) -> np.ndarray:
    """P(fake) per crop: `PixelModel` gives one fake logit per crop, for one-logit and multi-class models."""
    return 1.0 / (1.0 + np.exp(-predict_logits(model, loader, device)[:, 0]))


def perturbation_matrix(model: PixelModel, spec: ModelSpec, rows: pd.DataFrame, root: Path,
                        settings: dict[str, Any], device: torch.device) -> tuple[list[dict], np.ndarray]:
    """Rows of perturbations.csv for one model, and its clean crop probabilities."""
    clean = probabilities(model, loader_of(rows, root, spec, settings), device)
    results = [{"model": spec.name, "perturbation": "clean", "strength": "none", "parameter": "", "value": np.nan,
                **scores(rows, clean, settings["aggregation"])}]
    conditions = [(name, level) for name in settings["perturbations"] for level in LEVELS]
    for name, level in tqdm(conditions, desc=f"{spec.name}: perturbations", unit="setting", dynamic_ncols=True):
        probs = probabilities(model, loader_of(rows, root, spec, settings, fixed(name, level)), device)
        results.append({"model": spec.name, "perturbation": name, "strength": level, "parameter": PARAMETERS[name][0],
                        "value": STRENGTHS[name][level], **scores(rows, probs, settings["aggregation"])})
    return results, clean


# ---------------------------------------------------------------- crops: attacks


def attack_success(clean_probs: np.ndarray, adversarial_probs: np.ndarray) -> tuple[float, int]:
    """(share of the fakes detected clean that are called real after the attack, how many were detected)."""
    detected = np.asarray(clean_probs) > 0.5
    flipped = detected & (np.asarray(adversarial_probs) <= 0.5)
    count = int(detected.sum())
    return (float(flipped.sum()) / count if count else float("nan")), count


def adversarial_probs(model: PixelModel, loader: DataLoader, settings: dict[str, Any], name: str,
                      device: torch.device) -> dict[tuple[str, float], np.ndarray]:
    """Probabilities of the (fake) crops of `loader` after each attack at each eps."""
    model.eval()
    out: dict[tuple[str, float], list[np.ndarray]] = {(a, e): [] for a in settings["attacks"] for e in settings["eps"]}
    for batch, (pixels, _) in enumerate(tqdm(loader, desc=f"{name}: attacks", unit="batch", dynamic_ncols=True)):
        pixels = pixels.to(device)
        for attack, eps in out:
            adversarial = attack_toward(model, pixels, 0.0, attack, eps / 255.0, settings["pgd_steps"],
                                        settings["pgd_step_size"], settings["pgd_random_start"],
                                        image_seed(settings["seed"], batch))
            with torch.inference_mode():
                out[attack, eps].append(torch.sigmoid(model(adversarial)[:, 0]).cpu().numpy())
    return {key: np.concatenate(parts).astype(np.float64) for key, parts in out.items()}


def attack_rows(model: PixelModel, spec: ModelSpec, rows: pd.DataFrame, root: Path, clean: np.ndarray,
                settings: dict[str, Any], device: torch.device) -> list[dict]:
    """Rows of attacks.csv for one model: fakes attacked, reals left clean."""
    labels = rows["label"].to_numpy()
    fake = labels == 1
    if not fake.any() or not settings["attacks"]:
        return []
    attacked = adversarial_probs(model, loader_of(rows[fake], root, spec, settings), settings, spec.name, device)
    results = []
    for (attack, eps), probs in attacked.items():
        rate, detected = attack_success(clean[fake], probs)
        after = clean.copy()
        after[fake] = probs
        results.append({"model": spec.name, "attack": attack, "eps": eps, "eps_pixels": eps / 255.0,
                        "steps": settings["pgd_steps"] if attack == "pgd" else 1,
                        "step_size": settings["pgd_step_size"] if attack == "pgd" else 1.0,
                        "fakes": int(fake.sum()), "detected": detected, "success_rate": rate,
                        "clean_acc_fake": accuracy(labels[fake], clean[fake]),
                        "robust_acc_fake": accuracy(labels[fake], probs),
                        "clean_accuracy": accuracy(labels, clean), "robust_accuracy": accuracy(labels, after),
                        "fake_log_loss_clean": log_loss(labels[fake], clean[fake]),
                        "fake_log_loss_adv": log_loss(labels[fake], probs)})
    return results


# ---------------------------------------------------------------- videos: faces lost


def boxes_per_frame(tracks, frames: int) -> list[list[tuple[float, ...]]]:
    """The kept tracks' boxes, per sampled frame."""
    boxes: list[list[tuple[float, ...]]] = [[] for _ in range(frames)]
    for track in tracks:
        for detection in track.detections:
            boxes[detection.frame].append(detection.box)
    return boxes


def faces_lost(clean: list[list[tuple[float, ...]]], perturbed: list[list[tuple[float, ...]]],
               iou: float = 0.5) -> int:
    """Clean faces with no perturbed face overlapping them by `iou` in the same frame."""
    return sum(not any(box_iou(box, other) >= iou for other in after)
               for before, after in zip(clean, perturbed) for box in before)


def video_face_loss(videos: list[Path], settings: dict[str, Any], kernel_config: dict[str, Any],
                    device: str) -> pd.DataFrame:
    """Per video and perturbation: the faces (in kept person tracks) found clean, found perturbed, lost."""
    detector = detector_from_config(kernel_config, device)
    results = []
    for number, path in enumerate(tqdm(videos, desc="videos: faces lost", unit="video", dynamic_ncols=True)):
        try:
            frames, _ = decode_video(path, kernel_config, settings["video_frames"])
        except VideoReadError as error:
            log.warning("left out of video_faces.csv: %s", error)
            continue
        clean_tracks = person_tracks(detector, frames, kernel_config)
        clean = boxes_per_frame(clean_tracks, len(frames))
        faces_clean = sum(map(len, clean))
        for name in settings["perturbations"]:
            for level in LEVELS:
                transform = fixed(name, level)
                noisy = np.stack([apply(transform, frame, image_seed(settings["seed"], number, index))
                                  for index, frame in enumerate(frames)])
                tracks = person_tracks(detector, noisy, kernel_config)
                lost = faces_lost(clean, boxes_per_frame(tracks, len(frames)))
                results.append({"video": path.name, "perturbation": name, "strength": level, "frames": len(frames),
                                "faces_clean": faces_clean, "faces": sum(len(t.detections) for t in tracks),
                                "lost": lost, "lost_share": lost / faces_clean if faces_clean else np.nan,
                                "persons_clean": len(clean_tracks), "persons": len(tracks)})
    return pd.DataFrame(results, columns=VIDEO_COLUMNS)


# ---------------------------------------------------------------- outputs


def file_name(model: str) -> str:
    return re.sub(r"[^\w.-]", "_", model)


def grid(frame: pd.DataFrame, column: str, perturbations: list[str]) -> pd.DataFrame:
    """`column` as a perturbation × strength table (weak, medium, strong)."""
    table = frame.pivot_table(index="perturbation", columns="strength", values=column, aggfunc="mean")
    return table.reindex(index=perturbations, columns=list(LEVELS))


def plot_heatmap(frame: pd.DataFrame, model: str, perturbations: list[str], path: Path) -> None:
    """Crop log loss and AUC of one model per perturbation and strength, clean values in the titles."""
    plt = pyplot()

    rows = frame[frame["model"] == model]
    clean = rows[rows["perturbation"] == "clean"].iloc[0]
    figure, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(perturbations) + 2))
    for axis, column, colours in ((axes[0], "log_loss", "Reds"), (axes[1], "auc", "Greens")):
        draw_grid(axis, grid(rows[rows["perturbation"] != "clean"], column, perturbations), colours)
        axis.set_title(f"crop {column} (clean {clean[column]:.3f})")
    figure.suptitle(model)
    figure.tight_layout()
    save_figure(figure, path)


def draw_grid(axis, table: pd.DataFrame, colours: str) -> None:
    """An annotated heatmap of a perturbation × strength table."""
    axis.imshow(table.to_numpy(dtype=np.float64), cmap=colours, aspect="auto")
    axis.set_xticks(range(len(table.columns)), table.columns)
    axis.set_yticks(range(len(table.index)), table.index)
    for (row, col), value in np.ndenumerate(table.to_numpy(dtype=np.float64)):
        axis.text(col, row, f"{value:.3f}", ha="center", va="center", fontsize=9)


def plot_attacks(frame: pd.DataFrame, path: Path) -> None:
    """Attack success rate and robust accuracy on fakes against eps, a line per model and attack."""
    plt = pyplot()

    figure, (success, robust) = plt.subplots(1, 2, figsize=(11, 4))
    for (model, attack), group in frame.groupby(["model", "attack"]):
        success.plot(group["eps"], group["success_rate"], marker="o", label=f"{model} {attack}")
        robust.plot(group["eps"], group["robust_acc_fake"], marker="o", label=f"{model} {attack}")
    success.set(xlabel="eps (/255)", ylabel="share of detected fakes called real", ylim=(-0.02, 1.02),
                title="attack success rate")
    robust.set(xlabel="eps (/255)", ylabel="accuracy on fake crops", ylim=(-0.02, 1.02),
               title="robust accuracy on fakes (clean at eps 0)")
    for (model, _), group in frame.groupby(["model", "attack"]):
        robust.scatter([0], [group["clean_acc_fake"].iloc[0]], color="black", marker="x")
    success.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)


def lost_shares(videos: pd.DataFrame) -> pd.DataFrame:
    """Faces lost over all videos per perturbation and strength, as a share of the faces found clean."""
    lost = videos.groupby(["perturbation", "strength"])[["lost", "faces_clean"]].sum().reset_index()
    return lost.assign(lost_share=lost["lost"] / lost["faces_clean"].replace(0, np.nan))


def plot_video_faces(frame: pd.DataFrame, perturbations: list[str], path: Path) -> None:
    plt = pyplot()

    figure, axis = plt.subplots(figsize=(5.5, 0.5 * len(perturbations) + 2))
    draw_grid(axis, grid(lost_shares(frame), "lost_share", perturbations), "Oranges")
    axis.set_title(f"share of faces lost ({frame['video'].nunique()} videos)")
    figure.tight_layout()
    save_figure(figure, path)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, frame.to_csv(index=False, float_format="%.6f"))


def report_text(settings: dict[str, Any], matrix: pd.DataFrame, attacks: pd.DataFrame,
                videos: pd.DataFrame | None) -> str:
    """The strengths table, then per model the log loss / AUC grids and the attack table; faces lost."""
    parts = ["Perturbation strengths (training/data/perturb.py STRENGTHS)", strengths_table(), ""]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        for model, rows in matrix.groupby("model", sort=False):
            clean = rows[rows["perturbation"] == "clean"].iloc[0]
            parts += [f"== {model}: {int(clean['crops'])} crops; clean log loss {clean['log_loss']:.4f}, "
                      f"AUC {clean['auc']:.4f}, accuracy real {clean['acc_real']:.3f} fake {clean['acc_fake']:.3f}"]
            for column in ("log_loss", "auc", "acc_real", "acc_fake"):
                parts += [f"crop {column}:", grid(rows, column, settings["perturbations"]).to_string(), ""]
        if not attacks.empty:
            parts += ["Attacks on fake crops (target: real); success rate over the fakes detected clean",
                      attacks[["model", "attack", "eps", "detected", "success_rate", "clean_acc_fake",
                               "robust_acc_fake", "clean_accuracy", "robust_accuracy"]].to_string(index=False), ""]
        if videos is not None and not videos.empty:
            parts += [f"Faces lost before detection ({videos['video'].nunique()} videos, share of clean faces):",
                      grid(lost_shares(videos), "lost_share", settings["perturbations"]).to_string(), ""]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="weights_manifest.json of the models")
    parser.add_argument("--crops", type=Path, required=True, help="index.csv written by extract_faces.py")
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs, PNGs and report.txt")
    parser.add_argument("--folds", type=Path, default=None, help="folds.py CSV; with --fold: only that fold's crops")
    parser.add_argument("--fold", type=int, default=None, help="validation fold to evaluate (the models' held-out)")
    parser.add_argument("--models", nargs="+", default=None, help="manifest model names (default: all)")
    parser.add_argument("--max-crops", type=int, default=None, help="evaluate at most N crops, classes balanced")
    parser.add_argument("--videos", nargs="+", type=Path, default=None,
                        help="video files or folders for the faces-lost check")
    parser.add_argument("--max-videos", type=int, default=None, help="at most N of --videos")
    parser.add_argument("--config", type=Path, default=None, help=f"YAML overriding {DEFAULT_SETTINGS.name}")
    parser.add_argument("--kernel-config", type=Path, default=None, help="kernel JSON config for the face detector")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = robustness_settings(args.config)
    save_resolved(settings, args.out / "settings.yaml")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    specs = select_models(args.manifest, args.models)
    index = index_path(args.crops)
    rows = evaluation_rows(index, args.folds, args.fold, args.max_crops, settings["seed"])
    videos = video_files(args.videos, args.max_videos) if args.videos else []
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("%d crops (%d fake) of %d videos; models %s; %s", len(rows), int(rows["label"].sum()),
             rows["video"].nunique(), [s.name for s in specs], device)
    matrix, attacks = [], []
    for spec in specs:
        classifier = load_classifier(spec, "cpu").float()
        model = PixelModel(classifier, spec.mean, spec.std, spec.real_index).to(device).eval()
        results, clean = perturbation_matrix(model, spec, rows, index.parent, settings, device)
        matrix += results
        attacks += attack_rows(model, spec, rows, index.parent, clean, settings, device)
    matrix_frame = pd.DataFrame(matrix, columns=PERTURBATION_COLUMNS)
    attack_frame = pd.DataFrame(attacks, columns=ATTACK_COLUMNS)
    write_csv(matrix_frame, args.out / "perturbations.csv")
    for spec in specs:
        heatmap = args.out / f"heatmap_{file_name(spec.name)}.png"
        plot_heatmap(matrix_frame, spec.name, settings["perturbations"], heatmap)
    write_csv(attack_frame, args.out / "attacks.csv")
    if not attack_frame.empty:
        plot_attacks(attack_frame, args.out / "attacks.png")
    video_frame = None
    if videos:
        video_frame = video_face_loss(videos, settings, load_config(args.kernel_config), device.type)
        write_csv(video_frame, args.out / "video_faces.csv")
        plot_video_faces(video_frame, settings["perturbations"], args.out / "video_faces.png")
    report = report_text(settings, matrix_frame, attack_frame, video_frame)
    write_atomic(args.out / "report.txt", report)
    print(report, flush=True)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
