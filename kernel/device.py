"""The kernel's device: a GPU only after a real probe, else the CPU, with the reason.

`torch.cuda.is_available()` is not enough: a torch build without kernels for the GPU's architecture (Kaggle's
torch 2.10 for CUDA 12.8 on a P100, sm_60) reports the GPU as available and fails at its first real operation
(`cudaErrorNoKernelImageForDevice`). The probe checks that the GPU's compute capability is one this torch was built
for (`torch.cuda.get_arch_list()`, with CUDA's compatibility rules) and that a small fp16 convolution runs and matches
the CPU's result. The torch calls are injectable (`CudaApi`), so the probe is tested without a GPU.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from kernel.config import SettingsError

ARCH = re.compile(r"(sm|compute)_(\d+)([a-z]?)")


@dataclass(frozen=True)
class CudaApi:
    """The torch calls the probe makes, by device index; `torch_cuda_api()` gives the real ones."""

    is_available: Callable[[], bool]
    device_name: Callable[[int], str]
    capability: Callable[[int], tuple[int, int]]
    arch_list: Callable[[], list[str]]
    fp16_convolution: Callable[[int], None]  # raises if the convolution fails or gives a wrong result


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    reason: str


def fp16_convolution(index: int) -> None:
    """Run a small fp16 convolution on GPU `index` and compare it with float32 on the CPU (`RuntimeError` if off)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    image, weight = torch.rand(1, 3, 32, 32, generator=generator), torch.rand(8, 3, 3, 3, generator=generator)
    device = torch.device("cuda", index)
    result = torch.nn.functional.conv2d(image.to(device, torch.float16), weight.to(device, torch.float16), padding=1)
    torch.cuda.synchronize(device)
    expected = torch.nn.functional.conv2d(image, weight, padding=1)
    if not torch.allclose(result.float().cpu(), expected, rtol=1e-2, atol=5e-2):
        raise RuntimeError("an fp16 convolution gave wrong values")


def torch_cuda_api() -> CudaApi:
    import torch

    return CudaApi(torch.cuda.is_available, torch.cuda.get_device_name, torch.cuda.get_device_capability,
                   torch.cuda.get_arch_list, fp16_convolution)


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for `arch_list` runs on a GPU of `capability`: a cubin `sm_XY` runs on compute
    capability X.Z for Z >= Y (an `sm_90a`-style one only on 9.0), PTX `compute_XY` on any capability >= X.Y."""
    major, minor = capability
    for arch in arch_list:
        match = ARCH.fullmatch(arch)
        if match is None:
            continue
        kind, number, suffix = match.groups()
        arch_major, arch_minor = divmod(int(number), 10)
        if suffix:
            if (arch_major, arch_minor) == (major, minor):
                return True
        elif kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        elif kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def probe_cuda(index: int = 0, api: CudaApi | None = None) -> tuple[bool, str]:
    """`(usable, why)` for CUDA device `index`: present, an architecture this torch was built for, and a working
    fp16 convolution."""
    api = api or torch_cuda_api()
    try:
        if not api.is_available():
            return False, "no CUDA device is available here (torch.cuda.is_available() is False)"
        name, capability, archs = api.device_name(index), tuple(api.capability(index)), api.arch_list()
        sm = "sm_{}{}".format(*capability)
        if not arch_supported(capability, archs):
            return False, (f"{name} ({sm}) is not supported by this torch, built for {' '.join(archs)} (e.g. a P100, "
                           "sm_60, under a torch built for CUDA 12.8 or newer)")
        api.fp16_convolution(index)
    except Exception as error:  # any failure of the probe means this GPU is not used; the reason is logged
        return False, f"the CUDA probe failed: {type(error).__name__}: {error}"
    return True, f"{name} ({sm}) passed the probe (architecture supported, fp16 convolution correct)"


def choose_device(requested: str, api: CudaApi | None = None) -> DeviceChoice:
    """The device to run on for `--device` `requested`: `auto` is the GPU if the probe passes, else the CPU;
    `cuda[:N]` on a GPU that fails the probe is a `SettingsError`; `cpu` is the CPU."""
    if requested == "cpu":
        return DeviceChoice("cpu", "--device cpu")
    index = int(requested.partition(":")[2] or 0) if requested.startswith("cuda") else 0
    usable, why = probe_cuda(index, api)
    if usable:
        return DeviceChoice(requested if requested.startswith("cuda") else "cuda", why)
    if requested == "auto":
        return DeviceChoice("cpu", f"the CPU, because {why}")
    raise SettingsError(f"--device {requested}: {why}; use --device auto (the CPU when no GPU is usable) or "
                        "--device cpu")
