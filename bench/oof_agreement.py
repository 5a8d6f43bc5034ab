"""Does a fold's out-of-fold figure hold on the kernel's path? One trained fold model, its validation videos,
scored twice: from its `oof.csv` (training's crops and aggregation) and by `kernel.predict` on the videos.

    python -m bench.oof_agreement --run OUT/runs/lite0_fold0 --videos ../shared/data/dev/videos [--device cpu]

The model is taken alone (no stacker, its own raw scores), with the aggregation in the run's config.yaml. Prints
both log losses and AUCs on the same videos, their difference, and the videos whose scores differ most; writes
`RUN/oof_agreement.json`. Run on an idle machine: nothing is timed, but it decodes every validation video.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from dfdc_core.io import write_atomic
from dfdc_core.manifest import write_manifest
from dfdc_core.metrics import binary_report
from kernel.config import load_config
from kernel.pipeline import predict
from training.engine.evaluate import video_probs


def single_model_manifest(run: Path, folder: Path) -> Path:
    """A manifest holding only this run's model (paths made absolute), with no stacker."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    manifest_path = Path(config["manifest"]) if config["manifest"] else Path(config["out"]) / "weights_manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = next(m for m in manifest["models"] if m["name"] == config["name"])
    entry = {**entry, "file": str((manifest_path.parent / entry["file"]).resolve())}
    path = folder / "weights_manifest.json"
    write_manifest(path, [entry])
    return path


def compare(run: Path, videos_dir: Path, device: str) -> dict:
    config = yaml.safe_load((run / "config.yaml").read_text())
    oof = pd.read_csv(run / "oof.csv")
    training = video_probs(oof, oof["prob"].to_numpy(), config["aggregation"]).set_index("video")
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "sample.csv"
        pd.DataFrame({"filename": training.data.index, "label": 0.5}).to_csv(sample, index=False)
        kernel_config = load_config(aggregation=config["aggregation"], tta_hflip=config["tta_hflip"])
        run_result = predict(videos_dir, sample, single_model_manifest(run, Path(folder)), Path(folder) / "sub.csv",
                             device=device, config=kernel_config, progress=True)
    kernel = run_result.submission.set_index("filename")["label"]
    both = training.assign(kernel=kernel.reindex(training.data.index))
    oof_report = binary_report(both["label"], both["prob"])
    kernel_report = binary_report(both["label"], both["kernel"])
    both["difference"] = (both["kernel"] - both["prob"]).abs()
    return {"run": str(run), "videos": len(both), "aggregation": config["aggregation"],
            "oof_log_loss": oof_report["log_loss"], "kernel_log_loss": kernel_report["log_loss"],
            "oof_auc": oof_report["auc"], "kernel_auc": kernel_report["auc"],
            "difference": kernel_report["log_loss"] - oof_report["log_loss"],
            "fallbacks": dict(run_result.fallback_counts),
            "largest_differences": both.sort_values("difference", ascending=False).head(5)
            .reset_index()[["video", "label", "prob", "kernel"]].round(4).to_dict(orient="records")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.oof_agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a train_fold run folder (config.yaml, oof.csv)")
    parser.add_argument("--videos", type=Path, required=True, help="folder holding the fold's validation videos")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = compare(args.run, args.videos, args.device)
    write_atomic(args.run / "oof_agreement.json", json.dumps(result, indent=1))
    print(f"{result['videos']} validation videos of {args.run.name}, aggregation {result['aggregation']}:")
    print(f"  log loss  OOF (training crops) {result['oof_log_loss']:.4f}   "
          f"kernel.predict {result['kernel_log_loss']:.4f}"
          f"   difference {result['difference']:+.4f}")
    print(f"  AUC       OOF {result['oof_auc']:.4f}   kernel {result['kernel_auc']:.4f}; "
          f"fallbacks {result['fallbacks']}")
    for row in result["largest_differences"]:
        print(f"  {row['video']:<45} label {row['label']}  OOF {row['prob']:.4f}  kernel {row['kernel']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
