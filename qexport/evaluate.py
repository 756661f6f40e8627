"""Top-1 accuracy of a PyTorch model on the CIFAR-10 test set (fake-quant when quantized)."""

from __future__ import annotations

import os

import torch
from torch import nn

from . import data
from .errors import QexportError
from .progress import progress


def subset(images: torch.Tensor, labels: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``limit`` images spread evenly over the set (the test set is sorted by class); all when 0."""
    if not limit or limit >= len(images):
        return images, labels
    keep = torch.linspace(0, len(images) - 1, limit).long()
    return images[keep], labels[keep]


@torch.no_grad()
def predictions(
    model: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 500,
    show_progress: bool = False,
) -> torch.Tensor:  # fmt: skip
    """Predicted classes of ``model`` (switched to eval mode) on uint8 NHWC ``images``."""
    model.eval()
    preds = []
    starts = range(0, len(images), batch_size)
    for i in progress(starts, len(starts), "eval", enabled=show_progress):
        out = model(data.normalize(images[i : i + batch_size].to(device)))
        if out.shape[-1] != len(data.CLASSES):
            raise QexportError(f"the model has {out.shape[-1]} outputs; CIFAR-10 needs 10")
        preds.append(out.argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def top1(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, device: torch.device | str = "cpu",
    batch_size: int = 500, show_progress: bool = False,
) -> float:  # fmt: skip
    """Top-1 in percent of ``model`` on uint8 NHWC ``images``."""
    preds = predictions(model, images, device=device, batch_size=batch_size, show_progress=show_progress)
    return 100.0 * float((preds == labels.cpu()).float().mean()) if len(labels) else 0.0


def cifar10_top1(
    model: nn.Module, *, limit: int = 0, archive: str | os.PathLike[str] | None = None, show_progress: bool = False
) -> tuple[float, int]:
    """(top-1 %, images) on the CIFAR-10 test set, or ``limit`` images spread over it."""
    images, labels = subset(*data.cifar10("test", archive), limit)
    return top1(model, images, labels, show_progress=show_progress), len(images)
