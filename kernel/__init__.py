"""DFDC inference kernel: `python -m kernel` or `kernel.predict(...)`.

`predict` is imported on first use, so numpy-only modules (`kernel.aggregate`, `kernel.metrics`) can be
used without torch.
"""


def __getattr__(name: str):
    if name in ("predict", "KernelRun"):
        from kernel import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'kernel' has no attribute {name!r}")


__all__ = ["KernelRun", "predict"]
