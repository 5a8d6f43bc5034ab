"""Classifiers: the factory over timm names, their outputs as P(fake), and loading and saving their weights (the
manifest that names them is `dfdc_core.manifest`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from dfdc_core.manifest import ManifestError, ModelSpec, model_family

STATE_DICT_FIX = "export the model's weights with dfdc_core.models.save_fp16_state_dict (as training does)"
TORCH_KINDS = ("a zip archive (torch.save's format)", "a pickle")  # files torch.save writes
FILE_SIGNATURES = ((b"PK\x03\x04", TORCH_KINDS[0]), (b"\x80", TORCH_KINDS[1]), (b"\x89PNG", "a PNG image"),
                   (b"\xff\xd8\xff", "a JPEG image"))
TEXT_BYTES = frozenset(range(32, 127)) | frozenset(b"\t\n\r")


class UnreadableWeights(ValueError):
    """`torch.load(weights_only=True)` cannot read a file; the message says what the file is and why."""


def create_classifier(arch: str, num_classes: int = 1, **timm_kwargs) -> torch.nn.Module:
    """A timm backbone of a supported family with a `num_classes` head (weights not loaded), its weights in the
    channels-last layout, so every convolution runs channels-last whatever its input's layout: training's batches
    (stacked by the DataLoader) are contiguous, and a CPU training step runs about 1.2x faster so (bench.train_step);
    the kernel's batches are channels-last views of its HWC images already."""
    import timm

    model_family(arch)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **timm_kwargs)
    return model.to(memory_format=torch.channels_last)


def fake_logit(logits: torch.Tensor, real_index: int = 0) -> torch.Tensor:
    """The logit of P(fake) for each row of `(n, C)` classifier outputs.

    One output (C = 1): the output itself. Several (C > 1, one of them "real"): log(sum of the fake classes'
    exp) - real logit, which is logit(1 - softmax[real]). Grad-CAM explains this quantity.
    """
    if logits.shape[1] == 1:
        return logits[:, 0]
    fakes = torch.cat([logits[:, :real_index], logits[:, real_index + 1:]], dim=1)
    return torch.logsumexp(fakes, dim=1) - logits[:, real_index]


def forward_logits(module: torch.nn.Module, batch: torch.Tensor, hflip: bool = False) -> torch.Tensor:
    """The model's outputs for a normalised `(n, 3, H, W)` batch; with `hflip`, averaged with those of the
    mirrored batch (test-time augmentation, the same in the kernel and in training's OOF predictions)."""
    logits = module(batch)
    if hflip:
        logits = (logits + module(torch.flip(batch, dims=[3]))) / 2
    return logits


def fake_probability(logits: torch.Tensor, real_index: int = 0) -> torch.Tensor:
    """P(fake) of each row of `(n, C)` outputs: sigmoid for one output, 1 - softmax[real] for several."""
    return torch.sigmoid(fake_logit(logits.float(), real_index))


def file_kind(path: Path) -> str:
    """What a file is by its first bytes, for messages: empty, a zip (torch.save's format), a pickle, an image, text,
    or data of another format."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        return f"a file that cannot be read ({error.strerror})"
    kinds = [kind for signature, kind in FILE_SIGNATURES if head.startswith(signature)]
    if not head or kinds:
        return kinds[0] if kinds else "an empty file"
    return "a text file" if set(head) <= TEXT_BYTES else "data of another format"


def load_failure(error: Exception) -> str:
    """The telling sentence of `torch.load`'s error: the weights-only unpickler's reason, else its first line's."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
    line = (found.group(1) if found else next(iter(str(error).strip().splitlines()), "")).split(". ")[0]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def load_tensors(path: Path) -> Any:
    """What a torch file holds, read with `weights_only=True` (tensors and plain values: unpickling never runs other
    code); `UnreadableWeights` saying what the file is when torch cannot read it so: empty, text, an image, a
    truncated zip, or a whole pickled model (objects other than tensors, refused unread)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises EOFError, UnpicklingError, RuntimeError, KeyError, ... on such files
        kind, reason = file_kind(path), load_failure(error)
        if kind in TORCH_KINDS and "Unsupported global" in reason:
            raise UnreadableWeights(f"{kind} holding objects other than tensors and plain values (a whole pickled "
                                    f"model?), refused unread ({reason})") from error
        raise UnreadableWeights(f"{kind} that torch.load cannot read ({reason})") from error


def not_a_state_dict(value: Any) -> str | None:
    """None for a state_dict (a dict of names to tensors), else what `value` is instead, for messages."""
    if not isinstance(value, dict):
        return f"a {type(value).__name__}"
    wrong = [(key, item) for key, item in value.items()
             if not (isinstance(key, str) and isinstance(item, torch.Tensor))]
    return f"a dict whose entry {wrong[0][0]!r} is a {type(wrong[0][1]).__name__}, not a tensor" if wrong else None


def load_classifier(spec: ModelSpec, device: str = "cpu") -> torch.nn.Module:
    """Build `spec.arch`, load its state_dict (fp16 or fp32), eval mode; fp16 on CUDA, fp32 on CPU. `ManifestError`
    naming the file and what it holds when it is no state_dict of that architecture."""
    model = create_classifier(spec.arch, spec.num_classes)
    try:
        state = load_tensors(spec.file)
    except UnreadableWeights as error:
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') is {error}; {STATE_DICT_FIX}") from error
    if (held := not_a_state_dict(state)) is not None:
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') holds {held}, not a state_dict (names "
                            f"of tensors); {STATE_DICT_FIX}")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ManifestError(f"weight file {spec.file} does not fit arch '{spec.arch}': {error}") from error
    model = model.to(device).eval()
    model = model.half() if device.startswith("cuda") else model.float()
    non_finite = [key for key, tensor in model.state_dict().items()
                  if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if non_finite:  # NaN/inf in the file, or fp32 values beyond fp16's range on CUDA
        raise ManifestError(f"weight file {spec.file} (model '{spec.name}') has NaN or infinite values in "
                            f"{non_finite[:5]}; its training diverged or the file is damaged: re-export or retrain it")
    return model


def save_fp16_state_dict(model: torch.nn.Module, path: str | Path) -> None:
    """Save `model`'s weights as an fp16 CPU state_dict (integer buffers kept as they are), contiguous whatever the
    model's memory layout, atomically."""
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in model.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
