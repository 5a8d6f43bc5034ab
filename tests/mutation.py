"""`make mutation`: mutation testing of the kernel's contract with mutmut, and the killed share per module.

    python -m tests.mutation [--module NAME ...] [--max-children 2] [--fresh | --survivors | --report-only]

mutmut (its settings: `[mutmut]` in `setup.cfg`) copies `dfdc_core/`, `kernel/` and `training/` into `mutants/`,
makes one mutant per small change of the files named there (`<` for `<=`, `None` for a value, "XX" around a string,
...) and runs, for each mutant, only those tests of the fast subset in `setup.cfg` that call the mutated function. A
mutant is killed when a test fails. The modules of the contract are the functions named in `MODULES` below; each
module should kill at least `TARGET` of its mutants once the survivors judged equivalent (`mutation_equivalents.txt`
beside `setup.cfg`, one `mutant name reason` per line) are set aside. Exit 0 when every module meets it, 1 when one
does not, 2 when mutmut fails. Results are kept in `mutants/`: `--report-only` prints them again, `--survivors`
tests again only the mutants the last run left alive (after a test was added), `--fresh` deletes them first.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENTS = REPO / "mutation_equivalents.txt"
TARGET = 0.90

# module of the contract → the mutant names (mutmut's `module.x_function__mutmut_N`, `module.xǁClassǁmethod__...`)
MODULES: dict[str, tuple[str, ...]] = {
    "submission writer (kernel/submission.py, dfdc_core/io.py, kernel/kaggle.py)": (
        "kernel.submission.*", "dfdc_core.io.x_write_atomic__mutmut_*", "kernel.kaggle.x_checkpoint_path__mutmut_*"),
    "checkpoint signature and resume (kernel/pipeline.py)": ("kernel.pipeline.x_run_signature__mutmut_*",
                                                             "kernel.pipeline.x_open_checkpoint__mutmut_*"),
    "manifest loading, verification and preprocessing (dfdc_core/manifest.py, preprocessing.py, models.py)": (
        "dfdc_core.manifest.x_read_manifest__mutmut_*", "dfdc_core.manifest.x_model_specs__mutmut_*",
        "dfdc_core.manifest.x_read_file__mutmut_*", "dfdc_core.manifest.x_parse_json__mutmut_*",
        "dfdc_core.manifest.x_check_manifest_entries__mutmut_*", "dfdc_core.manifest.x_check_normalisation__mutmut_*",
        "dfdc_core.manifest.x_check_classes__mutmut_*", "dfdc_core.manifest.x_check_arch__mutmut_*",
        "dfdc_core.manifest.x_class_keys__mutmut_*", "dfdc_core.manifest.x_common_geometry__mutmut_*",
        "dfdc_core.manifest.x_entry_geometry__mutmut_*", "dfdc_core.preprocessing.x_preprocessing_problem__mutmut_*",
        "dfdc_core.preprocessing.x_read_preprocessing__mutmut_*",
        "dfdc_core.preprocessing.x_crops_preprocessing__mutmut_*",
        "dfdc_core.preprocessing.x_resolve_config__mutmut_*", "dfdc_core.preprocessing.x_differences_from__mutmut_*",
        "dfdc_core.manifest.x_read_stacker__mutmut_*", "dfdc_core.manifest.x_check_stacker_part__mutmut_*",
        "dfdc_core.manifest.x_check_stacker__mutmut_*", "dfdc_core.manifest.x_check_drop_order__mutmut_*",
        "dfdc_core.manifest.x_sha256_of__mutmut_*", "dfdc_core.manifest.x_verify_manifest__mutmut_*",
        "dfdc_core.models.x_load_classifier__mutmut_*", "dfdc_core.manifest.xǁModelSpecǁ__post_init____mutmut_*"),
    "settings checks (kernel/checks.py, dfdc_core/values.py)": ("kernel.checks.*", "dfdc_core.values.*"),
    "aggregation and stacker (dfdc_core/aggregate.py)": ("dfdc_core.aggregate.*",),
    "folds checking (training/data/folds.py)": ("training.data.folds.x_check_folds__mutmut_*",
                                              "training.data.folds.x_connected_groups__mutmut_*"),
    "crop geometry (dfdc_core/faces.py)": (
        "dfdc_core.faces.x_crop_window__mutmut_*", "dfdc_core.faces.x_crop_face__mutmut_*",
        "dfdc_core.faces.x_isotropic_resize__mutmut_*", "dfdc_core.faces.x_pad_square__mutmut_*"),
}
KILLED = {1, 3, -24, 24, 152, 255, 36}  # a failing test, pytest's internal error, a timeout (mutmut's stats.py)
NAMES = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", None: "not checked"}


def read_equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """Mutant name → why it is equivalent (the file's lines `name  reason`; `#` starts a comment)."""
    equivalents = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        if not reason.strip():
            raise SystemExit(f"{path}: {name} has no reason; write one after the name")
        equivalents[name] = reason.strip()
    return equivalents


def read_results(mutants: Path) -> dict[str, int | None]:
    """Exit code of every mutant mutmut has generated (None: not run)."""
    results = {}
    for meta in mutants.rglob("*.py.meta"):
        results.update(json.loads(meta.read_text())["exit_code_by_key"])
    return results


def module_of(name: str) -> str | None:
    for module, patterns in MODULES.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            return module
    return None


def report(results: dict[str, int | None], equivalents: dict[str, str], modules: list[str]) -> bool:
    """Print the killed share per module and every survivor; True when each module meets `TARGET`."""
    ok = True
    print(f"\n{'module':55s} {'mutants':>7s} {'killed':>6s} {'equiv.':>6s} {'other':>5s} {'killed share':>14s}")
    alive: dict[str, list[str]] = {}
    for module in modules:
        names = sorted(name for name in results if module_of(name) == module)
        killed = [n for n in names if results[n] in KILLED]
        equivalent = [n for n in names if results[n] not in KILLED and n in equivalents]
        other = [n for n in names if results[n] not in KILLED and n not in equivalents]
        judged = len(names) - len(equivalent)
        share = len(killed) / judged if judged else 1.0
        ok &= share >= TARGET and bool(names)
        print(f"{module:55s} {len(names):7d} {len(killed):6d} {len(equivalent):6d} {len(other):5d} "
              f"{share:8.1%} {'ok' if share >= TARGET else 'LOW':>5s}")
        alive[module] = other
    for module, names in alive.items():
        for name in names:
            print(f"  not killed ({NAMES.get(results[name], results[name])}): {name}   (mutmut show '{name}')")
    stale = sorted(set(equivalents) - {n for n, code in results.items() if code not in KILLED})
    for name in stale:
        if name in results:
            print(f"  listed as equivalent but killed now (remove it from {EQUIVALENTS.name}): {name}")
    print(f"\nkilled share = killed / (mutants - equivalent survivors); target {TARGET:.0%} per module")
    return ok


def survivors(results: dict[str, int | None], equivalents: dict[str, str], modules: list[str]) -> list[str]:
    """The mutants of `modules` not killed and not judged equivalent."""
    return sorted(name for name, code in results.items()
                  if module_of(name) in modules and code not in KILLED and name not in equivalents)


def run_mutmut(patterns: list[str], max_children: int) -> int:
    """`mutmut run` on the mutants matching `patterns` (through `mutmut.__main__`, as its console script does)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-c", "import sys; from mutmut.__main__ import cli; sys.exit(cli())", "run",
               "--max-children", str(max_children), *patterns]
    return subprocess.run(command, cwd=REPO, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", action="append", choices=list(MODULES), help="only this module (repeatable)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ first: test every mutant again")
    parser.add_argument("--survivors", action="store_true", help="test again only the last run's survivors")
    parser.add_argument("--report-only", action="store_true", help="print the table of the last run, run nothing")
    args = parser.parse_args(argv)
    modules = args.module or list(MODULES)
    if args.fresh:
        shutil.rmtree(REPO / "mutants", ignore_errors=True)
    patterns = [pattern for module in modules for pattern in MODULES[module]]
    if args.survivors:
        patterns = survivors(read_results(REPO / "mutants"), read_equivalents(), modules)
    if not args.report_only and patterns:
        code = run_mutmut(patterns, args.max_children)
        if code != 0:
            print(f"mutmut run exited with {code}", file=sys.stderr)
            return 2
    return 0 if report(read_results(REPO / "mutants"), read_equivalents(), modules) else 1


if __name__ == "__main__":
    sys.exit(main())
