"""What a detector learns beyond the source of a video: a frozen-backbone probe beside a recipe's stacker.

    python -m bench.shortcut_baseline --runs runs/quality/seed0 runs/quality/seed1 runs/quality/seed2 \\
        --out runs/shortcut

For each finished `python -m training.recipe` folder, the first model's backbone with its ImageNet weights and no
training (`--model` picks another) turns every face crop into pooled penultimate features; their mean per video
goes into an L2-regularised logistic regression (`--C`, classes weighted to the recipe's target prior) fitted on
the recipe's own group folds. Its out-of-fold log loss and AUC are printed beside the recipe's stacker, on all
videos and on the `--subset` (default: FaceForensics++ originals with their manipulations, where the same faces
are real and fake). A probe that matches the trained detector on all videos but not on the subset says the dev
videos are told apart by where they come from (resolution, compression, cropping), not by what was done to the
face: judge detectors on the subset and on held-back videos. Features are cached in OUT per crop folder and
backbone; writes OUT/shortcut.json, OUT/shortcut.csv and OUT/shortcut.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from bench.quality import FFPP_PAIRS, in_subset, subset_rows
from dfdc_core.io import write_atomic
from dfdc_core.metrics import prior_weights
from dfdc_core.models import create_classifier
from dfdc_core.plots import pyplot, save_figure
from training.data.dataset import CropDataset
from training.engine.pretrained import load_pretrained
from training.engine.train_config import resolve_config

PROBE = "frozen probe"


def model_settings(run: Path, model: str | None) -> dict:
    """The resolved training config (mean and std filled in) of the run's `model` (default: the recipe's first)."""
    configs = sorted((run / "configs").glob("*.yaml"))
    if not configs:
        raise FileNotFoundError(f"{run}/configs: no model configs; is {run} a finished training.recipe folder?")
    names = [yaml.safe_load(path.read_text())["group"] for path in configs]
    chosen = yaml.safe_load((run / "recipe.yaml").read_text())["models"][0]["name"] if model is None else model
    if chosen not in names:
        raise ValueError(f"--model {chosen}: {run} trained {', '.join(names)}")
    return resolve_config(configs[names.index(chosen)], fold=0)


@torch.no_grad()
def crop_features(settings: dict, rows: pd.DataFrame, batch_size: int = 64) -> np.ndarray:
    """Pooled penultimate features of every crop of `rows` from the untrained (ImageNet) backbone."""
    model = create_classifier(settings["arch"], 1)
    if settings["pretrained"]:
        load_pretrained(model, settings["pretrained"], settings["arch"])
    model.eval()
    dataset = CropDataset(rows, Path(settings["crops"]), settings["input_size"], settings["mean"], settings["std"])
    features = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="frozen features", unit="batch"):
        batch = torch.stack([dataset[i][0] for i in range(start, min(len(dataset), start + batch_size))])
        features.append(model.forward_head(model.forward_features(batch), pre_logits=True).numpy())
    return np.concatenate(features)


def video_features(settings: dict, cache: Path) -> pd.DataFrame:
    """Mean crop features per video, computed once per (crop folder, backbone, input size) and cached."""
    key = hashlib.sha256(json.dumps([str(Path(settings["crops"]).resolve()), settings["arch"],
                                     str(settings["pretrained"]), settings["input_size"]]).encode()).hexdigest()[:16]
    path = cache / f"features_{settings['arch']}_{settings['input_size']}_{key}.npz"
    rows = pd.read_csv(Path(settings["crops"]) / "index.csv")
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=crop_features(settings, rows))
        tmp.replace(path)
    features = pd.DataFrame(np.load(path)["features"])
    if len(features) != len(rows):
        raise ValueError(f"{path} holds {len(features)} crops, {settings['crops']}/index.csv {len(rows)}; delete it")
    return features.groupby(rows["video"].to_numpy()).mean()


def probe_oof(features: pd.DataFrame, folds: pd.DataFrame, c: float, target_prior: float) -> np.ndarray:
    """Out-of-fold P(fake) per row of `folds` from a logistic regression fitted on the other folds."""
    x, y, fold = features.loc[folds["video"]].to_numpy(), folds["label"].to_numpy(), folds["fold"].to_numpy()
    probs = np.zeros(len(folds))
    for k in np.unique(fold):
        held = fold == k
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        probe.fit(x[~held], y[~held], logisticregression__sample_weight=prior_weights(y[~held], target_prior))
        probs[held] = probe.predict_proba(x[held])[:, 1]
    return probs


def run_rows(run: Path, model: str | None, c: float, subset: str, cache: Path) -> list[dict]:
    """The probe and the recipe's stacker (and the constant) on all OOF videos and the subset of one run."""
    report = json.loads((run / "report.json").read_text())
    settings = model_settings(run, model)
    videos = pd.read_csv(run / "oof_videos.csv")
    folds = pd.read_csv(run / "folds.csv").set_index("video").loc[videos["video"]].reset_index()
    table = pd.DataFrame({"video": videos["video"], "label": videos["label"],
                          "score_probe": probe_oof(video_features(settings, cache), folds, c,
                                                   report["target_prior"]),
                          "calibrated": videos["calibrated"]})
    chosen = in_subset(table["video"], subset)
    rows = []
    for part, frame in (("all", table), ("subset", table[chosen])):
        for row in subset_rows(frame.reset_index(drop=True), report["target_prior"]):
            name = PROBE if row["name"] == "model probe" else row["name"]
            if name != "mean of models":
                rows.append({"run": str(run), "videos": part, "n": len(frame), **row, "name": name})
    return rows


def plot(means: pd.DataFrame, path: Path) -> None:
    """AUC and log loss of the probe, the stacker and the constant, on all videos and the subset."""
    figure, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("auc", "log_loss")):
        pivot = means.pivot(index="videos", columns="name", values=metric)
        pivot.plot.bar(ax=axis, rot=0)
        axis.set(title=f"{metric} (mean over runs)", xlabel="")
    figure.tight_layout()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shortcut_baseline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="finished training.recipe folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="recipe model whose backbone is probed (default: the first)")
    parser.add_argument("--C", dest="c", type=float, default=0.01, help="inverse L2 strength of the probe")
    parser.add_argument("--subset", default=FFPP_PAIRS, help="regex over video names for the subset figures")
    args = parser.parse_args(argv)
    table = pd.DataFrame([row for run in args.runs for row in run_rows(run, args.model, args.c, args.subset,
                                                                       args.out)])
    means = table.groupby(["videos", "name"], sort=False).agg(
        log_loss=("log_loss", "mean"), auc=("auc", "mean"), n=("n", "first")).reset_index()
    write_atomic(args.out / "shortcut.csv", table.to_csv(index=False, float_format="%.4f"))
    write_atomic(args.out / "shortcut.json", json.dumps({"runs": [str(r) for r in args.runs], "C": args.c,
                                                         "subset": args.subset, "rows": table.to_dict("records"),
                                                         "mean": means.to_dict("records")}, indent=1))
    plot(means, args.out / "shortcut.png")
    pd.set_option("display.width", 160)
    print(table.pivot_table(index=["videos", "name"], columns="run", values=["log_loss", "auc"], sort=False)
          .round(4).to_string())
    print("\nmean over runs (log loss weighted to the target prior):")
    print(means.round(4).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
