"""Does a trained recipe read the crop's margin as a label? Each fold model scores its own validation crops three ways.

    python -m bench.framing_cue --run OUT [--sources videos ffpp_crops] [--max-crops 4000]

A kernel crop is the face box plus 30 % of context on each side. A still whose face fills the image has no such
context: left as it was, its crop's margin is black (zero padding); `dfdc_core.video.pad_still` fills it with the
photo's edge pixels instead. A detector that learnt "black margin = real" (or any framing rule) would change its
mind when only the margin changes. For every fold model of the recipe run in OUT and its validation items of each
source, the crops are scored
- `as cut`: as extracted (a video's real context; a padded still's stretched edges),
- `black margin`: everything outside the detector's face box set to zero (an unpadded tight still),
- `edge margin`: the face box alone, padded back to the crop's size by repeating its edge pixels (a padded still),
and the table gives, per source and way: the mean P(fake) of real and of fake items, the AUC and log loss of the raw
item scores (the kernel's aggregation; no calibrator), and the mean change of the crop logit against `as cut` for
real and fake crops. A framing cue shows as a large shift that moves reals and fakes differently, or an AUC that
collapses. Writes `OUT/framing_cue.csv` and `OUT/framing_cue.png`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import yaml

from dfdc_core.faces import model_input
from dfdc_core.io import write_atomic
from dfdc_core.manifest import Manifest
from dfdc_core.metrics import auc, log_loss
from dfdc_core.models import load_classifier
from dfdc_core.plots import pyplot, save_figure
from training.data.dataset import read_crop
from training.data.index import read_index
from training.data.sbi import face_box
from training.engine.evaluate import video_probs
from training.engine.export import trained_preprocessing

WAYS = ("as cut", "black margin", "edge margin")


def reframed(crop: np.ndarray, margin: float, way: str) -> np.ndarray:
    """`crop` with its margin (outside the detector's face box) kept, zeroed or replaced by the box's edges."""
    if way == "as cut":
        return crop
    x1, y1, x2, y2 = face_box(crop.shape[:2], margin)
    height, width = crop.shape[:2]
    if way == "black margin":
        out = np.zeros_like(crop)
        out[y1:y2, x1:x2] = crop[y1:y2, x1:x2]
        return out
    return cv2.copyMakeBorder(np.ascontiguousarray(crop[y1:y2, x1:x2]), y1, height - y2, x1, width - x2,
                              cv2.BORDER_REPLICATE)


def crop_logits(model: torch.nn.Module, crops: list[np.ndarray], size: int, mean, std,
                batch: int = 64) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch):
            out.append(model(model_input(crops[start:start + batch], size, mean, std))[:, 0].float().numpy())
    return np.concatenate(out).astype(np.float64)


def fold_rows(run: Path, sources: list[str], max_crops: int, seed: int) -> tuple[pd.DataFrame, Path, float]:
    """Validation crops of `sources` with their fold (at most `max_crops` per source), the crops folder, the
    margin they were cut with."""
    config = yaml.safe_load(next((run / "configs").glob("*.yaml")).read_text())
    crops = Path(config["crops"])
    folds = pd.read_csv(run / "folds.csv", dtype={"video": str, "source": str}, keep_default_na=False)
    rows = read_index(crops / "index.csv").merge(folds[["video", "fold"]], on="video")
    rows = rows[rows["source"].isin(sources)]
    parts = [chosen.sample(min(max_crops, len(chosen)), random_state=seed) for _, chosen in rows.groupby("source")]
    return pd.concat(parts).reset_index(drop=True), crops, trained_preprocessing(crops).crop_margin


def measure(run: Path, sources: list[str], max_crops: int, seed: int = 0) -> pd.DataFrame:
    rows, crops, margin = fold_rows(run, sources, max_crops, seed)
    manifest = Manifest.load(run / "weights_manifest.json")
    folds_of = {entry["name"]: int(entry.get("fold", -1))
                for entry in json.loads(manifest.path.read_text())["models"]}
    logits = {way: np.full(len(rows), np.nan) for way in WAYS}
    for spec in manifest.models:
        chosen = np.flatnonzero(rows["fold"].to_numpy() == folds_of[spec.name])
        if not len(chosen):
            continue
        model = load_classifier(spec, "cpu")
        images = [read_crop(crops / rows["path"].iloc[i]) for i in chosen]
        for way in WAYS:
            logits[way][chosen] = crop_logits(model, [reframed(image, margin, way) for image in images],
                                              spec.input_size, spec.mean, spec.std)
    results = []
    for source, part in rows.groupby("source"):
        where = part.index.to_numpy()
        for way in WAYS:
            probs = 1 / (1 + np.exp(-logits[way][where]))
            items = video_probs(part, probs, "mean")
            y, p = items["label"].to_numpy(), items["prob"].to_numpy()
            shift = logits[way][where] - logits["as cut"][where]
            labels = part["label"].to_numpy()
            results.append({"source": source, "way": way, "items": len(items), "crops": len(part),
                            "p_fake_reals": float(p[y == 0].mean()) if (y == 0).any() else np.nan,
                            "p_fake_fakes": float(p[y == 1].mean()) if (y == 1).any() else np.nan,
                            "auc": auc(y, p), "log_loss": log_loss(y, p),
                            "logit_shift_reals": float(shift[labels == 0].mean()) if (labels == 0).any() else np.nan,
                            "logit_shift_fakes": float(shift[labels == 1].mean()) if (labels == 1).any() else np.nan})
    return pd.DataFrame(results)


def plot(table: pd.DataFrame, path: Path) -> Path:
    sources = list(dict.fromkeys(table["source"]))
    figure, axes = pyplot().subplots(1, len(sources), figsize=(4.5 * len(sources), 3.8), squeeze=False)
    for axis, source in zip(axes[0], sources):
        part = table[table["source"] == source]
        x = np.arange(len(part))
        axis.bar(x - 0.2, part["p_fake_reals"], 0.4, label="real items")
        axis.bar(x + 0.2, part["p_fake_fakes"], 0.4, label="fake items")
        axis.set_xticks(x, part["way"])
        axis.set(ylim=(0, 1), ylabel="mean P(fake)", title=f"{source}: margin kept, black or edges")
        axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.framing_cue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a training.recipe output folder")
    parser.add_argument("--sources", nargs="+", default=["videos"], help="sources whose validation crops to score")
    parser.add_argument("--max-crops", type=int, default=4000, help="crops per source, sampled (0: all)")
    args = parser.parse_args(argv)
    table = measure(args.run, args.sources, args.max_crops or 10**9)
    write_atomic(args.run / "framing_cue.csv", table.to_csv(index=False, float_format="%.4f"))
    plot(table, args.run / "framing_cue.png")
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(f"wrote {args.run / 'framing_cue.csv'} and {args.run / 'framing_cue.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
