"""`python -m training.robustness`: how the manifest's models hold up under upload noise and white-box attacks, and
what noise costs the detector (report.txt, perturbation heatmaps, attack curves).

    python -m training.robustness --manifest M --crops CROPS/index.csv --out DIR [--folds F --fold K]

The command line of `training/tools/robustness.py`; `--help` lists every option.
"""
from __future__ import annotations

import sys

from training.tools.robustness import main

if __name__ == "__main__":
    sys.exit(main())
