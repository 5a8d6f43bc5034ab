"""Issue 11: the device probe (no GPU needed: the torch calls are faked) and what the kernel does with it."""
import logging

import pytest

import kernel.device as device
import kernel.pipeline as pipeline
from dfdc_core.config import SettingsError
from kernel.cli import main

# torch 2.10 built for CUDA 12.8, as in Kaggle's image today ("supports CUDA capabilities sm_70 ... sm_120")
KAGGLE_TORCH_ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
GPUS = {"Tesla P100-PCIE-16GB": (6, 0), "Tesla T4": (7, 5), "NVIDIA L4": (8, 9), "NVIDIA A100": (8, 0),
        "NVIDIA H100": (9, 0)}


def fake_api(name: str, archs=KAGGLE_TORCH_ARCHS, convolution_error: Exception | None = None,
             available: bool = True) -> device.CudaApi:
    def convolution(index: int) -> None:
        if convolution_error is not None:
            raise convolution_error

    return device.CudaApi(lambda: available, lambda index: name, lambda index: GPUS[name], lambda: list(archs),
                          convolution)


@pytest.mark.parametrize("gpu,supported", [("Tesla P100-PCIE-16GB", False), ("Tesla T4", True), ("NVIDIA L4", True),
                                           ("NVIDIA A100", True), ("NVIDIA H100", True)])
def test_kaggle_accelerators_under_kaggles_torch(gpu, supported):
    """T4 (sm_75) and L4 (sm_89, through the sm_86 cubins) run Kaggle's torch; the P100 (sm_60) does not."""
    assert device.arch_supported(GPUS[gpu], KAGGLE_TORCH_ARCHS) is supported


def test_compatibility_rules_of_cubins_and_ptx():
    assert not device.arch_supported((8, 6), ["sm_89"])  # a cubin never runs on an older minor version
    assert not device.arch_supported((9, 0), ["sm_86"])  # nor on another major version
    assert device.arch_supported((9, 0), ["compute_80"])  # PTX is compiled for newer GPUs at load time
    assert not device.arch_supported((7, 5), ["compute_80"])
    assert device.arch_supported((9, 0), ["sm_90a"]) and not device.arch_supported((9, 1), ["sm_90a"])
    assert not device.arch_supported((8, 0), [])


def test_probe_needs_a_supported_architecture_and_a_working_fp16_convolution():
    usable, why = device.probe_cuda(0, fake_api("Tesla P100-PCIE-16GB"))
    assert not usable and "Tesla P100-PCIE-16GB (sm_60) is not supported by this torch" in why
    usable, why = device.probe_cuda(0, fake_api("Tesla T4", convolution_error=RuntimeError(
        "CUDA error: no kernel image is available for execution on the device")))
    assert not usable and "RuntimeError: CUDA error: no kernel image" in why
    usable, why = device.probe_cuda(0, fake_api("Tesla T4", available=False))
    assert not usable and "no CUDA device" in why
    usable, why = device.probe_cuda(0, fake_api("Tesla T4"))
    assert usable and "Tesla T4 (sm_75) passed the probe" in why


def test_auto_falls_back_to_the_cpu_and_cuda_is_refused_on_an_unusable_gpu():
    p100 = fake_api("Tesla P100-PCIE-16GB")
    choice = device.choose_device("auto", p100)
    assert choice.device == "cpu" and "because Tesla P100-PCIE-16GB (sm_60) is not supported" in choice.reason
    with pytest.raises(SettingsError, match=r"--device cuda: Tesla P100.*use --device auto"):
        device.choose_device("cuda", p100)
    assert device.choose_device("auto", fake_api("NVIDIA L4")).device == "cuda"
    assert device.choose_device("cuda:1", fake_api("NVIDIA L4")).device == "cuda:1"
    assert device.choose_device("cpu", p100).device == "cpu"


@pytest.fixture()
def p100(monkeypatch):
    """This machine, as a Kaggle P100 notebook: torch says CUDA is available, the probe says the GPU is unusable."""
    monkeypatch.setattr(device, "torch_cuda_api", lambda: fake_api("Tesla P100-PCIE-16GB"))


def test_cli_device_cuda_on_an_unusable_gpu_exits_2_before_any_video(p100, monkeypatch, tiny_manifest_path, tmp_path,
                                                                      caplog):
    monkeypatch.setattr(pipeline, "decode_video", lambda *a, **k: pytest.fail("a video was read"))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(b"")  # a folder without a video is refused first
    out = tmp_path / "submission.csv"
    code = main(["--videos", str(tmp_path / "videos"), "--manifest", str(tiny_manifest_path), "--out", str(out),
                 "--device", "cuda", "--no-progress"])
    assert code == 2 and not out.exists()
    assert "--device cuda: Tesla P100-PCIE-16GB (sm_60) is not supported" in caplog.text


def test_cli_auto_runs_on_the_cpu_and_logs_why(p100, tiny_manifest_path, tmp_path, caplog):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "missing_frames.mp4").write_bytes(b"")
    caplog.set_level(logging.INFO, logger="kernel")
    code = main(["--videos", str(tmp_path / "videos"), "--manifest", str(tiny_manifest_path), "--out",
                 str(tmp_path / "submission.csv"), "--no-progress"])  # --device auto is the default
    assert code == 0 and (tmp_path / "submission.csv").is_file()
    assert "device: cpu (the CPU, because Tesla P100-PCIE-16GB (sm_60) is not supported" in caplog.text
