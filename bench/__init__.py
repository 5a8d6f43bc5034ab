"""Benchmarks (not part of the kernel package): run as `python -m bench.kernel_speed`."""
