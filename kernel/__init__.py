"""DFDC inference kernel: `python -m kernel` or `kernel.predict(...)`."""
from kernel.pipeline import KernelRun, predict

__all__ = ["KernelRun", "predict"]
