#!/usr/bin/env python3
"""Train a zoo model on CIFAR-10 in FP32, or fine-tune it with quantization-aware training.

    # FP32 baseline
    python tools/train.py --method fp32 --epochs 100 --lr 0.1 --wd 5e-4 --out runs/fp32
    # QAT from that checkpoint (first/last layer at 8 bits)
    python tools/train.py --method lsq --bits 4 --init runs/fp32/model.pt --epochs 30 --out runs/lsq4
    python tools/train.py --method nipq --learn-bits --target-bits 4 --init runs/fp32/model.pt --out runs/nipq
    # QAT distilled from the FP32 model's logits (knowledge distillation)
    python tools/train.py --method lsq --bits 2 --init runs/fp32/model.pt --teacher runs/fp32/model.pt --out runs/lsq2kd
    # several GPUs / processes (each rank trains on its own shard of the data)
    torchrun --nproc_per_node 2 tools/train.py --method lsq --init runs/fp32/model.pt --out runs/lsq4

Methods: fp32, lsq, nipq, asq (LSQ weights + ASQ activations), post / pot (POST / POT weights + LSQ
activations), asq+post; or set --weight/--act directly.  Uses CUDA when present.  Resumable: every
epoch writes OUT/last.pt (training state) and OUT/model.pt (a qexport checkpoint); running the same
command again continues from OUT/last.pt.  Data: ../shared/data/cifar10-jpeg.tar.gz, decoded once and
cached outside the repository (qexport.data).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import qexport
from qexport import data as cifar
from qexport import evaluate as evaluation
from qexport.progress import Progress
from qexport.quant import NipqQuantizer, Quantizer

METHODS: dict[str, tuple[str | None, str | None]] = {
    "fp32": (None, None),
    "lsq": ("lsq", "lsq"),
    "nipq": ("nipq", "nipq"),
    "asq": ("lsq", "asq"),
    "post": ("post", "lsq"),
    "pot": ("pot", "lsq"),
    "asq+post": ("post", "asq"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="resnet20", help="zoo model (default resnet20)")
    p.add_argument("--method", default="fp32", choices=sorted(METHODS))
    p.add_argument("--weight", help="override the weight quantizer of --method (lsq, nipq, post, pot)")
    p.add_argument("--act", help="override the activation quantizer of --method (lsq, nipq, asq)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--placement", default="deployable", choices=["deployable", "paper"])
    p.add_argument(
        "--weight-range",
        default="full",
        choices=["full", "narrow"],
        help="LSQ weight codes: full (-2^(b-1)..2^(b-1)-1, the LSQ paper) or narrow (symmetric; ternary at 2 bits)",
    )
    p.add_argument(
        "--init",
        help="qexport checkpoint to start from: FP32 (QAT starts, quantizers calibrated on data) or one "
        "quantized with the same flags (QAT continues with a fresh optimizer and cosine schedule)",
    )
    p.add_argument(
        "--teacher",
        help="qexport checkpoint whose logits the student also learns (knowledge distillation; "
        "e.g. the FP32 model QAT started from)",
    )
    p.add_argument(
        "--distill-weight",
        type=float,
        default=0.5,
        help="with --teacher: loss = (1 - w) * cross-entropy + w * T^2 * KL(teacher || student at T)",
    )
    p.add_argument("--distill-temperature", type=float, default=2.0, help="with --teacher: softmax temperature T")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128, help="global batch (split over ranks)")
    p.add_argument("--lr", type=float, default=0.04)
    p.add_argument("--wd", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calib-batches", type=int, default=4, help="batches that initialise the quantizers")
    p.add_argument("--learn-bits", action="store_true", help="NIPQ: learn per-layer bit-widths")
    p.add_argument("--target-bits", type=float, help="NIPQ: average weight-bit target of the resource loss")
    p.add_argument("--target-gbops", type=float, help="NIPQ: BOPs target (G) of the resource loss")
    p.add_argument("--resource-weight", type=float, default=1.0, help="NIPQ: weight of the resource loss")
    p.add_argument("--finalize-epochs", type=int, default=3, help="NIPQ: last epochs with the hard quantizer")
    p.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke runs)")
    p.add_argument("--max-steps", type=int, default=0, help="stop each epoch after N steps (smoke runs)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images only")
    p.add_argument(
        "--time-budget",
        type=float,
        default=0,
        help="seconds: after the first epoch, shorten --epochs (and the cosine schedule) to fit",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--out", required=True, help="output folder (model.pt, last.pt)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--save-rank-states",
        action="store_true",
        help="each rank writes OUT/rank<R>_calibrated.pt (after quantizer initialisation, before DDP) and "
        "OUT/rank<R>.pt (final state): to verify that ranks stay identical",
    )
    args = p.parse_args(argv)
    weight, act = METHODS[args.method]
    args.weight = args.weight or weight
    args.act = args.act or act
    if args.teacher and not (0.0 <= args.distill_weight <= 1.0 and args.distill_temperature > 0):
        p.error("--distill-weight must lie in [0, 1] and --distill-temperature be positive")
    if (args.weight or args.act) and not args.init and args.method != "fp32":
        print("train: note: QAT without --init starts from random weights", file=sys.stderr)
    return args


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if args.device == "auto":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = args.device == "cuda"
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def param_groups(model: nn.Module, wd: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only: not on biases, BatchNorm or quantizer parameters."""
    quant_ids = {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 and id(p) not in quant_ids else no_decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(
    args: argparse.Namespace, shard_x: torch.Tensor, device: torch.device
) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model to train and, when QAT continues a quantized --init, that checkpoint's metadata."""
    if args.init:
        base = qexport.load(args.init)
        config = getattr(base, "qexport_config", None)
        if config is not None:
            _check_continues(args, config)
            return base.to(device), getattr(base, "qexport_meta", {})  # quantizers initialised: no calibration
    else:
        base = qexport.zoo.create(args.arch, num_classes=10)
    base = base.to(device)
    if args.weight is None and args.act is None:
        return base, None
    model = qexport.quantize(
        base,
        weight=args.weight,
        act=args.act,
        bits=args.bits,
        placement=args.placement,
        learn_bits=args.learn_bits,
        weight_range=args.weight_range,
    ).to(device)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(shard_x), generator=gen)[: args.calib_batches * 64]
    batches = [cifar.augment(shard_x[idx[i : i + 64]].to(device)) for i in range(0, len(idx), 64)]
    qexport.calibrate(model, batches)
    return model, None


def _check_continues(args: argparse.Namespace, config: dict[str, Any]) -> None:
    """A quantized --init continues QAT only with the same quantizers (a fresh optimizer and cosine)."""
    wanted = {
        "weight": args.weight,
        "act": args.act,
        "bits": args.bits,
        "placement": args.placement,
        "weight_range": args.weight_range,
        "learn_bits": args.learn_bits,
    }
    differ = [f"{k} {config.get(k)!r} (asked {v!r})" for k, v in wanted.items() if config.get(k) != v]
    if differ:
        raise qexport.QexportError(
            f"--init {args.init} is quantized with other settings: {', '.join(differ)}; "
            "continue it with matching flags, or start QAT from an FP32 checkpoint"
        )


def load_teacher(path: str, device: torch.device) -> nn.Module:
    """The frozen teacher of knowledge distillation, in eval mode (BatchNorm on running statistics).
    Loaded under a forked RNG: building the architecture draws random weights, and a run with a
    teacher must see the same augmentations as one without (comparable runs)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        teacher = qexport.load(path).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, weight: float, temperature: float
) -> torch.Tensor:
    """(1 - weight) * CE(student, labels) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    T^2 keeps the soft term's gradient the size of the hard term's whatever the temperature
    (Hinton et al. 2015)."""
    if student.shape != teacher.shape:
        raise qexport.QexportError(
            f"--teacher gives logits of shape {tuple(teacher.shape)}, the student {tuple(student.shape)}: "
            "distil from a model with the same classes"
        )
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.log_softmax(teacher / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - weight) * hard + weight * temperature**2 * soft


def resource_term(model: nn.Module, args: argparse.Namespace) -> torch.Tensor | None:
    if args.target_bits is not None:
        return args.resource_weight * qexport.resource_loss(model, args.target_bits, "avg_bits")
    if args.target_gbops is not None:
        return args.resource_weight * qexport.resource_loss(model, args.target_gbops, "bops")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world, device = setup_distributed(args)
    torch.manual_seed(args.seed)
    teacher = load_teacher(args.teacher, device) if args.teacher else None  # a bad path fails before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_x, train_y = cifar.cifar10("train")
    test_x, test_y = cifar.cifar10("test")
    if args.limit:
        keep = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
        train_x, train_y = train_x[keep], train_y[keep]
    test_x, test_y = evaluation.subset(test_x, test_y, args.eval_limit)
    shard = torch.arange(rank, len(train_x), world)  # each rank calibrates on its own shard

    model, prior = build_model(args, train_x[shard], device)
    if args.save_rank_states:
        torch.save(model.state_dict(), out / f"rank{rank}_calibrated.pt")
    core = model
    is_nipq = any(isinstance(m, NipqQuantizer) for m in model.modules())
    per_rank = max(args.batch_size // world, 1)
    steps = len(train_x) // (per_rank * world)
    if steps == 0:
        raise qexport.QexportError(
            f"{len(train_x)} training images make no batch of {per_rank * world}: lower --batch-size or raise --limit"
        )
    if args.max_steps:
        steps = min(steps, args.max_steps)
    schedule = {"total": steps * args.epochs}  # mutable: --time-budget may shorten it

    state_path = out / "last.pt"
    start_epoch, history, elapsed = 0, [], 0.0
    resumed = state_path.is_file()
    if resumed:
        state = torch.load(state_path, map_location=device, weights_only=True)
        core.load_state_dict(state["model"])
        start_epoch, history, elapsed = state["epoch"], state["history"], state["seconds"]
        if is_nipq and _any_hard(core):
            qexport.finalize(core)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.SGD(param_groups(core, args.wd), lr=args.lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / schedule["total"], 1.0)))
    )
    if resumed:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if rank == 0:
            print(f"train: resumed {state_path} at epoch {start_epoch}", file=sys.stderr)

    train_x_dev, train_y_dev = train_x.to(device), train_y.to(device)
    began = time.time()
    epoch = start_epoch
    while epoch < args.epochs:
        t0 = time.time()
        if is_nipq and epoch == args.epochs - args.finalize_epochs:
            qexport.finalize(core)
            _drop_frozen(opt)
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(train_x), generator=gen)[rank::world].to(device)
        bar = Progress(steps, f"epoch {epoch + 1}/{args.epochs}", enabled=rank == 0 and not args.no_progress)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps):
            idx = perm[step * per_rank : (step + 1) * per_rank]
            x, y = cifar.augment(train_x_dev[idx]), train_y_dev[idx]
            logits = model(x)
            if teacher is None:
                loss = F.cross_entropy(logits, y)
            else:
                with torch.no_grad():
                    soft_targets = teacher(x)
                loss = distillation_loss(logits, soft_targets, y, args.distill_weight, args.distill_temperature)
            extra = resource_term(core, args) if is_nipq and not _any_hard(core) else None
            if extra is not None:
                loss = loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            bar.update(1, f"loss {float(loss.detach()):.3f}" if step % 50 == 0 else None)
        bar.close()
        if world > 1:
            average_buffers(core, world)
        elapsed += time.time() - t0
        top1 = evaluation.top1(core, test_x, test_y, device=device)
        record = {
            "epoch": epoch + 1,
            "loss": float(loss_sum) / steps,
            "test_top1": top1,
            "lr": opt.param_groups[0]["lr"],
            "seconds": round(elapsed, 1),
        }
        if is_nipq:
            record["avg_weight_bits"] = float(qexport.quant.average_bits(core, "weight").detach())
            record["avg_act_bits"] = float(qexport.quant.average_bits(core, "act").detach())
        history.append(record)
        if rank == 0:
            print(f"train: {record}", file=sys.stderr)
            _save(core, out, args, history, elapsed, device, epoch + 1, opt, sched, prior)
        epoch += 1
        if args.time_budget and epoch == start_epoch + 1:
            fit = epoch + int((args.time_budget - (time.time() - began)) // (time.time() - t0))
            if fit < args.epochs:
                args.epochs = max(fit, epoch)
                schedule["total"] = steps * args.epochs
                if rank == 0:
                    print(f"train: --time-budget: shortened to {args.epochs} epochs", file=sys.stderr)
    if args.save_rank_states:
        torch.save(core.state_dict(), out / f"rank{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def continued_meta(prior: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata of a run that continued ``prior``'s checkpoint: epochs, seconds and history count
    both runs (so the model card reports the whole training), the commands both."""
    done = int(prior.get("epochs", 0))
    before = float(prior.get("train_seconds", 0.0))
    out = dict(meta)
    out["epochs"] = done + meta["epochs"]
    out["planned_epochs"] = done + meta["planned_epochs"]
    out["train_seconds"] = round(before + meta["train_seconds"], 1)
    out["init"] = prior.get("init")
    out["continued_from"] = meta["init"]
    out["distill"] = meta.get("distill") or prior.get("distill")  # the latest run's teacher, else the earlier one's
    out["commands"] = [*prior.get("commands", [prior.get("command")]), meta["command"]]
    out["history"] = [
        *prior.get("history", []),
        *({**h, "epoch": h["epoch"] + done, "seconds": round(h["seconds"] + before, 1)} for h in meta["history"]),
    ]
    return out


def average_buffers(model: nn.Module, world: int) -> None:
    """Average the float buffers (BatchNorm running statistics) over ranks: each rank updated them
    on its own shard since DDP's last broadcast, and every rank must save the same model."""
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world


def _any_hard(model: nn.Module) -> bool:
    return any(m._hard for m in model.modules() if isinstance(m, NipqQuantizer))


def _drop_frozen(opt: torch.optim.Optimizer) -> None:
    """After NIPQ's finalize the bit parameters are frozen: the optimizer keeps only the rest."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not p.requires_grad:
                opt.state.pop(p, None)
        group["params"] = [p for p in group["params"] if p.requires_grad]


def _save(
    model: nn.Module,
    out: Path,
    args: argparse.Namespace,
    history: list[dict[str, Any]],
    elapsed: float,
    device: torch.device,
    epoch: int,
    opt: torch.optim.Optimizer,
    sched: Any,
    prior: dict[str, Any] | None,
) -> None:
    meta = {
        "dataset": "cifar10-jpeg (../shared/data)",
        "preprocess": {"mean": list(cifar.MEAN), "std": list(cifar.STD), "layout": "NCHW float32"},
        "method": args.method,
        "weight": args.weight,
        "act": args.act,
        "bits": args.bits,
        "placement": args.placement,
        "epochs": epoch,
        "planned_epochs": args.epochs,
        "seed": args.seed,
        "init": args.init,
        "distill": (
            {"teacher": args.teacher, "weight": args.distill_weight, "temperature": args.distill_temperature}
            if args.teacher
            else None
        ),
        "command": " ".join(["python", "tools/train.py", *sys.argv[1:]]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_seconds": round(elapsed, 1),
        "test_top1": history[-1]["test_top1"],
        "history": history,
    }
    if prior:
        meta = continued_meta(prior, meta)
    if any(isinstance(m, NipqQuantizer) for m in model.modules()):
        meta["nipq_bits"] = {m.path: m.integer_bits() for m in model.modules() if isinstance(m, NipqQuantizer)}
    qexport.save(model, out / "model.pt", meta=meta)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": epoch,
        "history": history,
        "seconds": elapsed,
    }
    tmp = out / "last.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "last.pt")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except qexport.QexportError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        sys.exit(2)
