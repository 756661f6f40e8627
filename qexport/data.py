"""CIFAR-10 from the shared JPEG archive: decoded once, cached as .npz outside the repository.

The archive holds ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg`` (classes in index order, which is
alphabetical).  It is looked for at ``$QEXPORT_CIFAR10``, then ``../shared/data/`` beside the
checkout and beside the working directory.  The cache lives in ``$QEXPORT_CACHE`` or
``~/.cache/qexport``.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch

from .errors import QexportError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# the usual CIFAR-10 normalisation; the checkpoint records it as the model's preprocessing
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"


def find_archive(path: str | os.PathLike[str] | None = None) -> Path:
    candidates = [Path(path)] if path else []
    if os.environ.get("QEXPORT_CIFAR10"):
        candidates.append(Path(os.environ["QEXPORT_CIFAR10"]))
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "data" / ARCHIVE_NAME, Path.cwd().parent / "shared" / "data" / ARCHIVE_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise QexportError(
        f"CIFAR-10 archive {ARCHIVE_NAME} not found (looked at {', '.join(map(str, candidates))}); "
        "set QEXPORT_CIFAR10 to its path"
    )


def cache_dir() -> Path:
    root = Path(os.environ.get("QEXPORT_CACHE", Path.home() / ".cache" / "qexport"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _decode(archive: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    images: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        for m in members:
            parts = Path(m.name).parts
            split, cls = parts[-3], parts[-2]
            if split not in images or cls not in CLASSES:
                raise QexportError(f"{archive}: unexpected member {m.name}; is this the CIFAR-10 JPEG archive?")
            data = tar.extractfile(m).read()  # type: ignore[union-attr]
            images[split].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8))
            labels[split].append(CLASSES.index(cls))
    out = {}
    for split in ("train", "test"):
        out[f"{split}_x"] = np.stack(images[split])
        out[f"{split}_y"] = np.asarray(labels[split], dtype=np.int64)
    return out


def cifar10(split: str, archive: str | os.PathLike[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images ``[N, 32, 32, 3]``, int64 labels ``[N]``) of ``split`` ('train' or 'test')."""
    if split not in ("train", "test"):
        raise QexportError(f"split must be 'train' or 'test', not {split!r}")
    src = find_archive(archive)
    cached = cache_dir() / f"cifar10-{src.stat().st_size}.npz"
    if not cached.is_file():
        arrays = _decode(src)
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cached)
    with np.load(cached) as data:
        return torch.from_numpy(data[f"{split}_x"]), torch.from_numpy(data[f"{split}_y"])


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` -> normalised float32 ``[N, 3, H, W]``."""
    x = images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image and random horizontal flip, batched on the
    tensor's device; returns normalised float32 ``[N, 3, H, W]``."""
    x = normalize(images_uint8)
    n, _, h, w = x.shape
    dev = x.device
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), device=dev, generator=generator)
    dx = torch.randint(0, 9, (n,), device=dev, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=dev)[None])[:, None, None, :]
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(3, device=dev)[None, :, None, None]
    out = padded[batch, chan, rows, cols]
    flip = torch.rand(n, device=dev, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
