"""The tracer's overhead over a plain forward pass, batches of 256.

    python bench/tracer.py [--device cpu|cuda] [--steps 30] [--runs 5]

Blocks of plain forward passes and of traced ones alternate (so drift on a shared machine
hits both); a traced block ends with ``tracer.flush()``, so every batch it traced is
recorded in the log before its time stops. Forward passes run with autograd on, as in
training; a second figure adds backward and the optimizer step.

Models: on the CPU a small CNN on 3x32x32 images; on CUDA a CIFAR ResNet-18 (on a GPU the
small CNN's forward pass takes a fraction of a millisecond, so it is reported too, as the
worst case: the tracer's few extra kernels are then a visible share).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import machine, scratch
from torch import nn

import modeltrail as mt
from modeltrail.producers.torch import ClassificationTracer

BATCH = 256
CLASSES = 10


def small_cnn() -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, CLASSES),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


def resnet18() -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 3, 1, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, CLASSES)]
    return nn.Sequential(*layers)


def measure(
    name: str,
    model: nn.Module,
    device: torch.device,
    home: Path,
    steps: int,
    runs: int,
    train: bool,
) -> None:
    model = model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    y = torch.randint(0, CLASSES, (BATCH,), device=device)
    ids = torch.arange(BATCH, device=device)
    reg = mt.open(home / f"{name}-{train}", actor="bench", namespace="bench")
    tracer = ClassificationTracer(model, name, "bench", reg)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(forward: Callable[[], Any]) -> None:
        out = forward()
        if train:
            nn.functional.cross_entropy(out, y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    def plain() -> Any:
        return model(x)

    def traced() -> Any:
        return tracer(x, y, input_ids=ids, n_epoch=0)

    def block(forward: Callable[[], Any], flush: bool) -> float:
        sync()
        started = time.perf_counter()
        for _ in range(steps):
            step(forward)
        if flush:
            tracer.flush()
        sync()
        return (time.perf_counter() - started) / steps

    block(plain, False)
    block(traced, True)
    pairs = [(block(plain, False), block(traced, True)) for _ in range(runs)]
    overheads = [t / p - 1 for p, t in pairs]
    plain_ms = statistics.median(p for p, _ in pairs) * 1000
    traced_ms = statistics.median(t for _, t in pairs) * 1000
    what = "forward+backward+step" if train else "forward"
    print(
        f"{name} on {device.type}, {what}: plain {plain_ms:.2f} ms/batch, traced "
        f"{traced_ms:.2f} ms/batch, overhead {statistics.median(overheads) * 100:+.1f}% "
        f"(runs: {', '.join(f'{o * 100:+.1f}%' for o in overheads)})"
    )
    tracer.close()
    if not train:  # the recording work alone, on the calling thread: a steadier figure
        inline = ClassificationTracer(model, name, "inline", reg, background=False)
        with torch.no_grad():
            out = model(x)
        sync()
        started = time.perf_counter()
        for _ in range(steps * runs):
            inline.trace(out, y, input_ids=ids, n_epoch=0)
        sync()
        work_ms = (time.perf_counter() - started) / (steps * runs) * 1000
        print(
            f"{name} on {device.type}: recording alone (values, copy, pack, one transaction) "
            f"{work_ms:.2f} ms/batch = {work_ms / plain_ms * 100:.1f}% of the plain forward"
        )
        inline.close()
    reg.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {machine()}{gpu}; torch {torch.__version__}, {args.threads} threads")
    models = [("small-cnn", small_cnn)]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        models.append(("resnet18", resnet18))
    with scratch() as tmp:
        for name, make in models:
            for train in (False, True):
                measure(name, make(), device, Path(tmp), args.steps, args.runs, train)


if __name__ == "__main__":
    main()
