"""What a training step costs on this machine, with the classifier's weights channels-last (as
`dfdc_core.models.create_classifier` builds it) against the default contiguous layout.

    python -m bench.train_step --archs tf_efficientnet_lite0@160 --batch-size 16 --steps 12

For each `timm_name@input_size`, both layouts train on the same random contiguous batches (a DataLoader's stack is
contiguous) with the training loss and optimiser (BCE on one logit, AdamW): forward, backward and step, timed in
alternating blocks so both see the same machine load. Prints the median milliseconds a step of each layout and
their ratio; `--json` writes them. Speed only: the weights are random.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from dfdc_core.io import write_atomic
from dfdc_core.models import create_classifier
from kernel.scorer import available_cores

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def step_seconds(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    """Wall seconds of each of `steps` training steps on one batch."""
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images)[:, 0], targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def measure(arch: str, size: int, batch_size: int, steps: int, blocks: int) -> dict[str, float]:
    """Median ms a step per layout (the first block of each is a warm-up and not counted)."""
    images = torch.randn(batch_size, 3, size, size)
    targets = torch.randint(0, 2, (batch_size,)).float()
    runs = {}
    for name, layout in LAYOUTS.items():
        model = create_classifier(arch).to(memory_format=layout).train()
        runs[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4), [])
    for block in range(blocks + 1):
        for model, optimizer, seconds in runs.values():
            timed = step_seconds(model, images, targets, optimizer, steps)
            if block:
                seconds.extend(timed)
    return {name: 1000 * statistics.median(seconds) for name, (_, _, seconds) in runs.items()}


def parse_arch(text: str) -> tuple[str, int]:
    arch, _, size = text.partition("@")
    if not size.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give timm_name@input_size, e.g. tf_efficientnet_lite0@160")
    return arch, int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", type=parse_arch, default=[("tf_efficientnet_lite0", 160)],
                        help="classifiers as timm_name@input_size (default: the cpu recipe's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per layout, alternating")
    parser.add_argument("--threads", type=int, default=available_cores(), help="torch threads (default: cores)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':32s} {'contiguous ms':>14s} {'channels-last ms':>17s} {'ratio':>6s}   "
          f"(batch {args.batch_size}, {args.threads} threads)")
    for arch, size in args.archs:
        figures = measure(arch, size, args.batch_size, args.steps, args.blocks)
        ratio = figures["contiguous"] / figures["channels_last"]
        rows.append({"arch": arch, "input_size": size, **figures, "ratio": ratio})
        print(f"{arch + '@' + str(size):32s} {figures['contiguous']:14.0f} {figures['channels_last']:17.0f} "
              f"{ratio:5.2f}x")
    if args.json:
        write_atomic(args.json, json.dumps({"batch_size": args.batch_size, "threads": args.threads, "rows": rows},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
