"""`python -m kernel`: write submission.csv for a folder of videos (by default the competition's, found where Kaggle
mounts it: see `kernel.kaggle`; the environment variable DFDC_KAGGLE_ROOT replaces /kaggle).

Exit 0: the submission is written. Exit 2: a setting, path or input file is unusable, or --device cuda names a GPU
that fails the probe; the message names it and the fix, and no video was read.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import logging
from pathlib import Path
from typing import IO

from dfdc_core.config import SettingsError, parse_overrides, read_regular_file
from kernel.config import load_config
from kernel.kaggle import crash_log_path, kaggle_root
from kernel.offline import block_network

log = logging.getLogger("kernel")
# the settings with a flag of their own (--frames, ...); any other is --set KEY=VALUE
SETTING_FLAGS = ("frames", "max_frame_side", "detect_batch_size", "classify_batch_size", "detect_long_side",
                 "aggregation", "prior", "time_budget_hours")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kernel", description=__doc__)
    parser.add_argument("--videos", default=None, help="folder of test videos (default: the competition's "
                        "test_videos/ under /kaggle/input/competitions/<slug>/, /kaggle/input/<slug>/ or "
                        "/kaggle/input/datasets/<owner>/<slug>/)")
    parser.add_argument("--sample-submission", default=None,
                        help="CSV whose 'filename' column lists the videos, in order (default: the one beside the "
                             "competition's test_videos/ when --videos is not given; none: every video)")
    parser.add_argument("--manifest", default="weights_manifest.json", help="weights_manifest.json")
    parser.add_argument("--out", default=None, help="submission CSV to write (default /kaggle/working/submission.csv)")
    parser.add_argument("--device", default="auto", help="auto (default: a GPU that passes a probe, else the CPU), "
                        "cpu, cuda or cuda:N (exit 2 if that GPU fails the probe)")
    parser.add_argument("--crashed", type=Path, default=None,
                        help="JSON list of videos that crashed the kernel twice: they get the prior unread (the "
                             "notebook's retry loop writes it)")
    parser.add_argument("--config", default=None, help="JSON overriding kernel/default_config.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting of kernel/default_config.json, over --config (repeatable; the value is read "
                             "as JSON: --set tta_hflip=true --set still_pad=0.2); the flags below win over it")
    parser.add_argument("--frames", type=int, default=None, help="frames sampled per video (default 32)")
    parser.add_argument("--max-frame-side", type=int, default=None,
                        help="frames with a longer side are shrunk to it as they are decoded (default 2160)")
    parser.add_argument("--detect-batch-size", type=int, default=None, help="frames per MTCNN batch")
    parser.add_argument("--classify-batch-size", type=int, default=None, help="face crops per forward pass")
    parser.add_argument("--detect-long-side", type=int, default=None,
                        help="long side (px) of the downscaled copy MTCNN sees")
    parser.add_argument("--aggregation", default=None, help="frame→person rule: mean (default), trimmed_mean, "
                        "logit_mean or confident; a manifest's stacker names its own")
    parser.add_argument("--prior", type=float, default=None, help="label for videos that cannot be scored")
    parser.add_argument("--time-budget-hours", type=float, default=None, help="wall-clock budget (default 8.5)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--block-network", action="store_true",
                        help="cut this process and its children off the network, to prove the run is offline as on "
                             "Kaggle (a new network namespace where the OS allows one; the log says what is covered)")
    return parser.parse_args(argv)


def read_crashed(path: Path | None) -> list[str]:
    """The video names of a `--crashed` JSON list (none without the flag); `SettingsError` if it is unusable."""
    if path is None:
        return []
    try:
        names = json.loads(read_regular_file(path).decode())
    except (OSError, ValueError) as error:
        raise SettingsError(f"--crashed {path}: cannot read it as JSON ({error}); pass a JSON list of video names") \
            from error
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        raise SettingsError(f"--crashed {path}: expected a JSON list of video names, got {type(names).__name__}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.block_network:  # first: a new network namespace needs a process that has started no thread yet
        log.info("%s", block_network().describe())
    from dfdc_core.manifest import ManifestError
    from kernel.checks import check_not_an_input
    from kernel.pipeline import predict

    out = Path(args.out) if args.out else kaggle_root() / "working" / "submission.csv"
    crash_log = open_crash_log(out)
    try:
        flags = {key: getattr(args, key) for key in SETTING_FLAGS if getattr(args, key) is not None}
        config = load_config(args.config, **{**parse_overrides(args.set), **flags})
        check_not_an_input(out, [Path(path) for path in (args.config, args.crashed) if path is not None])
        predict(args.videos, args.sample_submission, args.manifest, out, args.device, config,
                progress=not args.no_progress, crashed=read_crashed(args.crashed))
    except (SettingsError, ManifestError) as error:
        log.error("%s", error)
        return 2
    finally:
        if crash_log is not None:  # this process lives on: no native crash to report
            faulthandler.disable()
            crash_log.close()
            Path(crash_log.name).unlink(missing_ok=True)
    return 0


def open_crash_log(out: Path) -> IO | None:
    """Have `faulthandler` write every thread's stack to `<out>.crash.log` if a signal kills the process (the
    notebook reads which thread crashed; the file is removed when the process ends otherwise). None where that file
    cannot be written (logged), or where `faulthandler` already reports elsewhere (`python -X faulthandler`, pytest)."""
    if faulthandler.is_enabled():
        return None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = open(crash_log_path(out), "w")
    except OSError as error:
        log.warning("no crash log beside %s (%s)", out, error)
        return None
    faulthandler.enable(handle, all_threads=True)
    return handle
