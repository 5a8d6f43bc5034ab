"""The recipe behind `python -m training.recipe`: labelled videos → face crops → group folds → every model on every fold
→ calibrator fitted to the target prior → a ready manifest and its report."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from tqdm import tqdm

from dfdc_core.aggregate import Stacker
from dfdc_core.config import read_settings
from dfdc_core.io import write_atomic
from dfdc_core.manifest import model_family, update_manifest
from dfdc_core.metrics import CLIP, auc, log_loss, prior_weights
from dfdc_core.plots import pyplot, save_figure
from dfdc_core.video import is_image
from ensemble.stacking import (
    Table,
    calibration_items,
    fit_stacker,
    format_report,
    oof_table,
    score_rows,
    shift_prior,
    verdict,
)
from training.data.extract_faces import run_extraction
from training.data.folds import (
    DEFAULT_LINK_RULES,
    DEFAULT_PERSON_IDS,
    assign_folds,
    fold_links,
    left_out_path,
    read_link_rules,
    read_person_ids,
    videos_from_index,
)
from training.data.sources import collect_sources
from training.engine.train_fold import run_training

log = logging.getLogger("recipe")


RECIPES = Path(__file__).parents[1] / "recipes"
RECIPE_KEYS = {"frames", "folds", "target_prior", "aggregation", "features", "train", "models"}


def read_recipe(name: str) -> dict[str, Any]:
    """A recipe by name (`cpu`, `gpu`: training/recipes/NAME.yaml) or path, checked."""
    path = RECIPES / f"{name}.yaml" if (RECIPES / f"{name}.yaml").is_file() else Path(name)
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES.glob("*.yaml"))
        raise FileNotFoundError(f"--recipe {name}: no such recipe; use one of {known} or a YAML file path")
    recipe = read_settings(path, "--recipe")
    if not RECIPE_KEYS <= set(recipe) or set(recipe) - RECIPE_KEYS:
        raise ValueError(f"{path}: a recipe has exactly the keys {sorted(RECIPE_KEYS)}")
    problems = recipe_problems(recipe)
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return recipe


def recipe_problems(recipe: dict[str, Any]) -> list[str]:
    """What is wrong with the shape of a recipe's values (the training settings are checked per model later)."""
    whole = {key: recipe[key] for key in ("frames", "folds")}
    problems = [f"{key}: {value!r} must be a whole number of at least {1 if key == 'frames' else 2}"
                for key, value in whole.items()
                if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "frames" else 2)]
    prior = recipe["target_prior"]
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 < prior < 1:
        problems.append(f"target_prior: {prior!r} must be a share of fakes strictly between 0 and 1")
    if not isinstance(recipe["aggregation"], str):
        problems.append(f"aggregation: {recipe['aggregation']!r} must be the name of a frame -> video rule")
    features = recipe["features"]
    if not isinstance(features, list) or not features or not all(isinstance(name, str) for name in features):
        problems.append(f"features: {features!r} must be a list of statistic names, such as [logit]")
    if not isinstance(recipe["train"], dict):
        problems.append(f"train: {recipe['train']!r} must be a mapping of training settings (or {{}})")
    models = recipe["models"]
    if not isinstance(models, list) or not models or not all(isinstance(model, dict) for model in models):
        problems.append(f"models: {models!r} must be a list of mappings, such as [{{name: lite0, arch: ...}}]")
    else:
        names = [model.get("name") for model in models]
        if not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
            problems.append(f"every model needs a unique name, got {names}")
    return problems


def make_folds(crops: Path, out: Path, k: int, seed: int, names: set[str] | None = None) -> pd.DataFrame:
    """Group folds of the extracted videos, of those in `names` only when given (a crop folder shared with other
    data holds more); name link rules, `group` columns and estimated person ids applied, the items those leave out
    listed in `folds_left_out.csv`. An existing folds.csv is kept if it holds the same videos, so a resumed run
    trains on the folds it started with."""
    videos = videos_from_index(crops / "index.csv")
    if names is not None:
        videos = videos[videos["video"].isin(names)].reset_index(drop=True)
    links, left_out = fold_links(videos, read_link_rules(DEFAULT_LINK_RULES), read_person_ids(DEFAULT_PERSON_IDS))
    videos = videos[~videos["video"].isin(left_out["video"])]
    path = out / "folds.csv"
    if path.is_file():
        folds = pd.read_csv(path, dtype={"original": str, "video": str, "source": str}, keep_default_na=False)
        if set(folds["video"]) != set(videos["video"]):
            raise ValueError(f"{path} was made for other videos than {crops / 'index.csv'}; use a new --out")
        return folds
    table = assign_folds(videos, k, seed, links)
    write_atomic(left_out_path(path), left_out.to_csv(index=False))
    write_atomic(path, table.to_csv(index=False))
    if len(left_out):
        log.info("%d items left out of the folds (estimated person ids): %s", len(left_out), left_out_path(path))
    return table


def model_config(recipe: dict[str, Any], model: dict[str, Any], crops: Path, out: Path, seed: int,
                 device: str) -> dict[str, Any]:
    """The train_fold config of one recipe model: defaults ← recipe `train` ← the model's keys."""
    settings = {key: value for key, value in model.items() if key != "name"}
    return {**recipe["train"], **settings, "name": model["name"] + "_fold{fold}", "group": model["name"],
            "crops": str(crops), "folds": str(out / "folds.csv"), "out": str(out / "runs"),
            "manifest": str(out / "weights_manifest.json"), "aggregation": recipe["aggregation"], "seed": seed,
            "device": device}


def train_all(recipe: dict[str, Any], crops: Path, out: Path, seed: int, device: str) -> list[Path]:
    """Every model on every fold (finished folds skipped, interrupted ones resumed); returns the OOF files."""
    jobs = [(model, fold) for model in recipe["models"] for fold in range(recipe["folds"])]
    oofs = []
    for model, fold in tqdm(jobs, desc="recipe: models x folds", unit="fold"):
        config_path = out / "configs" / f"{model['name']}.yaml"
        write_atomic(config_path, yaml.safe_dump(model_config(recipe, model, crops, out, seed, device)))
        run_dir = out / "runs" / f"{model['name']}_fold{fold}"
        oof = run_dir / "oof.csv"
        if not oof.is_file():
            resume = (run_dir / "last.pt").is_file()
            log.info("training %s fold %d%s", model["name"], fold, " (resuming)" if resume else "")
            run_training(config_path, fold, resume)
        oofs.append(oof)
    return oofs


def attach_stacker(out: Path, stacker: dict[str, Any]) -> Path:
    """Write stacker.json and name it in the manifest (atomic)."""
    write_atomic(out / "stacker.json", json.dumps(stacker, indent=1))
    manifest_path = out / "weights_manifest.json"
    update_manifest(manifest_path, stacker="stacker.json")
    return manifest_path


def family_rows(recipe: dict[str, Any], table, target_prior: float) -> list[dict[str, Any]]:
    """Log loss and AUC of the plain mean of each model family's groups (when a family has several)."""
    families: dict[str, list[int]] = {}
    for index, group in enumerate(table.groups):
        arch = next(m["arch"] for m in recipe["models"] if m["name"] == group)
        families.setdefault(model_family(arch), []).append(index)
    y = table.labels
    return [{"name": f"family {family}", "log_loss": log_loss(y, table.scores[:, idx].mean(axis=1),
                                                               weights=prior_weights(y, target_prior)),
             "log_loss_at_data_prior": log_loss(y, table.scores[:, idx].mean(axis=1)),
             "auc": auc(y, table.scores[:, idx].mean(axis=1))}
            for family, idx in families.items() if len(idx) > 1]


def video_table(table, stacker: dict[str, Any], report_probs: np.ndarray) -> pd.DataFrame:
    """Per OOF video: label, cluster, each group's raw score and the calibrated score (nested-CV for the videos the
    calibrator was fitted on)."""
    frame = pd.DataFrame({"video": table.videos, "label": table.labels, "cluster": table.clusters})
    for index, group in enumerate(table.groups):
        frame[f"score_{group}"] = table.scores[:, index]
    frame["calibrated"] = report_probs
    frame["calibrated_at_oof_prior"] = shift_prior(report_probs, stacker["target_prior"], stacker["oof_prior"])
    return frame


def calibrated_items(oofs: list[Path], folds_path: Path, recipe: dict[str, Any], fitted_on: set[str] | None,
                     reported_on: set[str] | None) -> tuple[dict[str, Any], list[dict[str, Any]], Table, pd.DataFrame]:
    """Fit the calibrator/stacker on the OOF items in `fitted_on` (every item when None); return it, the report rows
    and the table of the items in `reported_on` (every item when None), and the per-item table of every OOF item:
    nested-CV scores for the fitted items, the fitted calibrator's for the others."""
    stats = tuple(recipe["features"])
    stacker, _, fitted = fit_stacker(oofs, folds_path, recipe["aggregation"], target_prior=recipe["target_prior"],
                                     stats=stats, only=fitted_on)
    every = fitted if fitted_on is None else oof_table(oofs, folds_path, fitted.groups, recipe["aggregation"], stats)
    nested = dict(zip(fitted.videos, fitted.calibrated))
    applied = Stacker(stacker["feature_names"], stacker["coef"], stacker["intercept"]).predict(every.features)
    every.calibrated = np.array([nested.get(video, prob) for video, prob in zip(every.videos, applied)])
    keep = np.array([reported_on is None or video in reported_on for video in every.videos], dtype=bool)
    reported = every.subset(keep)
    rows = score_rows(reported, reported.calibrated, recipe["target_prior"], CLIP)
    return stacker, rows, reported, video_table(every, stacker, every.calibrated)


def reported_items(folds: pd.DataFrame) -> set[str] | None:
    """The items the report's rows describe: the videos (what the kernel scores) when the folds hold any besides
    stills, else None (every item)."""
    stills = folds["video"].map(is_image)
    return set(folds.loc[~stills, "video"]) if stills.any() and not stills.all() else None


def item_summary(items: pd.DataFrame, target_prior: float) -> dict[str, float]:
    """Figures of some OOF items: counts, the calibrated score's log loss (weighted to the prior when both classes
    are present) and AUC, the constant prior's log loss, and the share of reals and of fakes called fake (> 0.5)."""
    y, probs = items["label"].to_numpy(), items["calibrated"].to_numpy()
    weights = prior_weights(y, target_prior)
    return {"n": len(items), "real": int((y == 0).sum()), "fake": int((y == 1).sum()),
            "log_loss": log_loss(y, probs, weights=weights), "auc": auc(y, probs),
            "constant": log_loss(y, np.full(len(y), target_prior), weights=weights),
            "reals_called_fake": float((probs[y == 0] > 0.5).mean()) if (y == 0).any() else float("nan"),
            "fakes_called_fake": float((probs[y == 1] > 0.5).mean()) if (y == 1).any() else float("nan")}


def source_rows(items: pd.DataFrame, target_prior: float) -> list[dict[str, Any]]:
    """`item_summary` per source, then per manipulation `method` of a source's fakes (against its reals)."""
    rows = []
    for source, chosen in items.groupby("source", sort=True):
        rows.append({"source": source, "method": "", **item_summary(chosen, target_prior)})
        reals = chosen[chosen["label"] == 0]
        for method, fakes in chosen[chosen["label"] == 1].groupby("method", sort=True):
            if method:
                rows.append({"source": source, "method": method,
                             **item_summary(pd.concat([reals, fakes]), target_prior)})
    return rows


def format_sources(rows: list[dict[str, Any]], target_prior: float) -> str:
    lines = [f"{'source':<14}{'method':<10}{'items':>7}{'real':>6}{'fake':>6}{'LL@' + format(target_prior, '.2f'):>9}"
             f"{'AUC':>7}{'const':>7}{'reals>0.5':>10}{'fakes>0.5':>10}"]
    for row in rows:
        lines.append(f"{row['source']:<14}{row['method']:<10}{row['n']:>7}{row['real']:>6}{row['fake']:>6}"
                     f"{row['log_loss']:>9.4f}{row['auc']:>7.3f}{row['constant']:>7.3f}{row['reals_called_fake']:>10.3f}"
                     f"{row['fakes_called_fake']:>10.3f}")
    return "\n".join(lines)


def plot_report(videos: pd.DataFrame, groups: list[str], path: Path) -> Path:
    """Reliability (prior-weighted) and ROC of the calibrated nested-CV scores beside the raw mean."""
    from sklearn.metrics import roc_curve

    y = videos["label"].to_numpy()
    raw = videos[[f"score_{g}" for g in groups]].mean(axis=1).to_numpy()
    figure, (reliability, roc) = pyplot().subplots(1, 2, figsize=(10, 4.5))
    bins = np.linspace(0, 1, 6)
    weights = prior_weights(y, 0.5)
    for name, probs in (("mean of models (raw)", raw), ("calibrated (nested CV)", videos["calibrated"].to_numpy())):
        which = np.clip(np.digitize(probs, bins) - 1, 0, len(bins) - 2)
        centres, rates = [], []
        for b in range(len(bins) - 1):
            inside = which == b
            if inside.any():
                centres.append(float(np.average(probs[inside], weights=weights[inside])))
                rates.append(float(np.average(y[inside], weights=weights[inside])))
        reliability.plot(centres, rates, marker="o", label=name)
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, probs)
            roc.plot(fpr, tpr, label=f"{name}, AUC {auc(y, probs):.3f}")
    reliability.plot([0, 1], [0, 1], "--", color="grey")
    reliability.set(xlabel="predicted P(fake)", ylabel="share fake (weighted to 50 %)",
                    title="reliability of OOF video scores")
    roc.plot([0, 1], [0, 1], "--", color="grey")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC of OOF video scores")
    reliability.legend(fontsize=8)
    roc.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)


def run_minutes(report_path: Path, started: float) -> dict[str, float]:
    """This invocation's wall minutes and `minutes`, the total over every invocation on this OUT (a resumed run
    adds to what the earlier report says)."""
    this_run = (time.monotonic() - started) / 60
    earlier = json.loads(report_path.read_text()).get("minutes", 0.0) if report_path.is_file() else 0.0
    return {"minutes": round(earlier + this_run, 2), "minutes_this_run": round(this_run, 2)}


def run_recipe(data: list[Path], out: Path, recipe_name: str = "cpu", seed: int = 0, crops: Path | None = None,
               device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """The whole recipe on the sources `data`; returns the report (also written to OUT/report.json)."""
    started = time.monotonic()
    data = [Path(path) for path in ([data] if isinstance(data, (str, Path)) else data)]
    recipe = read_recipe(recipe_name)
    out.mkdir(parents=True, exist_ok=True)
    crops = crops or out / "crops"
    write_atomic(out / "recipe.yaml", yaml.safe_dump({**recipe, "seed": seed, "data": [str(path) for path in data]},
                                                     sort_keys=False))
    run_extraction(data, crops, recipe["frames"], progress=progress)
    make_folds(crops, out, recipe["folds"], seed, {item.video for item in collect_sources(data)[0]})
    oofs = train_all(recipe, crops, out, seed, device)
    folds = pd.read_csv(out / "folds.csv", dtype={"video": str, "source": str}, keep_default_na=False)
    fitted_on = calibration_items(out / "folds.csv")
    stacker, rows, table, items = calibrated_items(oofs, out / "folds.csv", recipe, fitted_on, reported_items(folds))
    manifest = attach_stacker(out, stacker)
    rows = rows[:len(table.groups)] + family_rows(recipe, table, recipe["target_prior"]) + rows[len(table.groups):]
    methods = videos_from_index(crops / "index.csv")[["video", "method"]]
    items = items.merge(folds[["video", "source"]], on="video", how="left").merge(methods, on="video", how="left")
    write_atomic(out / "oof_videos.csv", items.to_csv(index=False, float_format="%.6f"))
    plot_report(items[items["video"].isin(table.videos)], table.groups, out / "report.png")
    sources = source_rows(items, recipe["target_prior"])
    calibrated_on = sorted(set(folds.loc[folds["video"].isin(fitted_on), "source"])) if fitted_on else "every item"
    report = {"recipe": recipe_name, "seed": seed, "videos": len(table.videos), "oof_prior": float(table.labels.mean()),
              "target_prior": recipe["target_prior"], "rows": rows, "verdict": verdict(rows), "sources": sources,
              "calibrated_on": calibrated_on, "calibrated_items": stacker["videos"],
              **run_minutes(out / "report.json", started), "manifest": str(manifest)}
    write_atomic(out / "report.json", json.dumps(report, indent=1))
    print(f"\n{len(table.videos)} OOF videos ({report['oof_prior']:.1%} fake), calibrator fitted on "
          f"{stacker['videos']} items ({calibrated_on}), recipe {recipe_name}, seed {seed}, "
          f"{report['minutes_this_run']:.1f} min ({report['minutes']:.1f} min over every run on {out})")
    print(format_report(rows, recipe["target_prior"], report["oof_prior"]))
    print(f"\nby source (the calibrated score; nested CV where it was fitted):\n"
          f"{format_sources(sources, recipe['target_prior'])}")
    print(f"{report['verdict']}\nready: python -m kernel --manifest {manifest}; plots: {out / 'report.png'}")
    return report
