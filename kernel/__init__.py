"""The Kaggle path: `python -m kernel` or `kernel.predict(...)`, over the shared library `dfdc_core`.

`predict` is imported on first use, so the notebook's standard-library modules (`kernel.kaggle`) load without torch.
"""


def __getattr__(name: str):
    if name in ("predict", "KernelRun"):
        from kernel import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'kernel' has no attribute {name!r}")


__all__ = ["KernelRun", "predict"]
