"""The ``qexport`` command line.

Exit codes: 0 success, 1 parity failure, 2 bad input (one error line, no traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import torch

from . import __version__, zoo
from .bench import RUNTIMES
from .check import CheckReport, check
from .checkpoint import build, load, read, save
from .errors import QexportError
from .export.emit import ADDS
from .export.openvino import TARGETS
from .quant.layers import QuantConv2d, QuantLinear
from .quant.placement import calibrate, quantize
from .summary import format_table, layer_count, onnx_summary, quantizer_rows

if TYPE_CHECKING:
    import numpy as np

EPILOG = """examples:
  qexport models/resnet20_lsq_w4a4.pt --format onnx  export to ONNX and check parity
  qexport models/resnet20_lsq_w4a4.pt --format onnx --target openvino -o m_ov.onnx
                                                     the form OpenVINO's CPU plugin runs (int8 where it can),
                                                     checked in onnxruntime and in OpenVINO
  qexport bench m_ov.onnx --runtime openvino         time it in OpenVINO (pip install qexport[openvino])
  qexport inspect models/resnet20_lsq_w4a4.onnx      per-layer ops, bits, weight storage and size
  qexport check models/resnet20_lsq_w4a4.pt models/resnet20_lsq_w4a4.onnx --data ../shared/data/cifar10-jpeg.tar.gz
  qexport inspect models/resnet20_lsq_w4a4.pt        per-layer methods, bits, scales
  qexport eval models/resnet20_lsq_w4a4.pt           CIFAR-10 test top-1 of the fake-quant model
  qexport quantize resnet20 --init fp32.pt --weight post --act asq --bits 4 -o calibrated.pt
  qexport zoo                                        the model zoo
  qexport import best.pth --from nipq --nipq-act on -o nipq.pt   a checkpoint of the official NIPQ / ASQ-POST code
"""


def _inspect(args: argparse.Namespace) -> int:
    path = Path(args.model)
    if path.suffix == ".onnx":
        if not path.is_file():
            raise QexportError(f"{path}: no such ONNX file")
        try:
            print(onnx_summary(str(path)))
        except QexportError:
            raise
        except Exception as exc:  # protobuf DecodeError and friends
            raise QexportError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
        return 0
    payload = read(path, trust=args.trust)
    model = build(payload, path, trust=args.trust)
    arch = payload.get("arch", {})
    print(f"{path}  ({path.stat().st_size / 1e6:.2f} MB, qexport {payload.get('qexport_version')})")
    print(f"architecture: {arch.get('name')} {arch.get('kwargs') or ''}".rstrip())
    quant = payload.get("quant")
    if quant is None:
        print("quantization: none (float model)")
    else:
        print(
            f"quantization: weight={quant['weight']} act={quant['act']} bits={quant['bits']} "
            f"placement={quant['placement']} first/last={quant['first_last_bits']} glue={quant['glue_bits']}"
        )
    q, f = layer_count(model)
    print(f"layers: {q} quantized Conv/Linear, {f} float; parameters: {sum(p.numel() for p in model.parameters()):,}")
    meta = payload.get("meta") or {}
    if "test_top1" in meta:
        print(
            f"trained: {meta.get('epochs')} epochs on {meta.get('device')}, fake-quant test top-1 {meta['test_top1']}%"
        )
    rows = [
        [r.path, r.role, r.method, str(r.bits), "s" if r.signed else "u", r.codes, r.scale]
        for r in quantizer_rows(model)
    ]
    if rows:
        print(format_table(rows, ["quantizer", "role", "method", "bits", "sign", "codes", "scale"]))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import cifar10_top1

    model = load(args.model, trust=args.trust)
    if args.threads:
        torch.set_num_threads(args.threads)
    acc, count = cifar10_top1(model, limit=args.limit, archive=args.data, show_progress=not args.quiet)
    print(f"{args.model}: CIFAR-10 test top-1 {acc:.2f}% on {count} images (PyTorch fake-quant, CPU)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from . import data

    if args.init:
        model = load(args.init, trust=args.trust)
        if getattr(model, "qexport_config", None) is not None:
            raise QexportError(f"{args.init} is already quantized: start from a float checkpoint")
    else:
        model = zoo.create(args.arch, **({"num_classes": 10} if args.arch == "resnet20" else {}))
    qmodel = quantize(model, weight=args.weight, act=args.act, bits=args.bits, placement=args.placement)
    if args.calib == "cifar10":
        images, _ = data.cifar10("train", args.data)
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[: args.calib_images]
        batches = [data.normalize(images[idx[i : i + 64]]) for i in range(0, len(idx), 64)]
    else:
        n = max(args.calib_images // 64, 1)
        batches = [zoo.example_input(qmodel, 64, seed=i) for i in range(n)]
    calibrate(qmodel, batches)
    meta = {"calibrated_on": args.calib, "calibration_images": args.calib_images, "trained": False}
    save(qmodel, args.output, meta=meta)
    print(
        f"wrote {args.output}: {args.arch} weight={args.weight} act={args.act} bits={args.bits} "
        f"placement={args.placement}, calibrated on {args.calib_images} {args.calib} images (not trained)"
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from .importers import import_checkpoint

    act = None if args.nipq_act is None else args.nipq_act == "on"
    result = import_checkpoint(
        args.checkpoint, args.source, bits=args.bits, arch=args.arch, act=act, weights=args.asq_weights,
        measure=not args.no_measure, image_size=args.image_size,
    )  # fmt: skip
    meta = {"imported_from": result.source, "source_file": Path(args.checkpoint).name, "import_notes": result.notes}
    save(result.model, args.output, meta=meta)
    for note in result.notes:
        print(f"  {note}")
    print(f"wrote {args.output}: {result.arch} from an official {result.source} checkpoint; next: "
          f"qexport {args.output} --format onnx")  # fmt: skip
    return 0


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _export(args: argparse.Namespace) -> int:
    # PyTorch on one thread: the export traces (no arithmetic to share) and the quick check runs a few
    # samples; with a thread per core, every parallel region of those small ops waits for a peer that
    # a busy machine has descheduled (ResNet-20 with two other jobs on 2 cores: 47 s, one thread 18 s)
    with _torch_threads(1):
        return _export_and_check(args)


def _export_and_check(args: argparse.Namespace) -> int:
    from .export import export

    if args.format != "onnx":
        raise QexportError(f"--format {args.format!r} is not supported: use --format onnx")
    model = load(args.model, trust=args.trust)
    out = Path(args.output or Path(args.model).with_suffix(".onnx"))
    export(model, out, opset=args.opset, packed=not args.int8_weights, adds=args.adds)
    plain = out.read_bytes() if args.target == "openvino" else b""  # the OpenVINO check's reference
    if args.target == "openvino":
        from .export.openvino import write_openvino

        write_openvino(out)
    layers = [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    quants = [q for m in layers for q in (m.weight_quant, m.act_quant) if q]
    methods = sorted({f"{q.method}{'-' * q.method[-1].isdigit()}{q.code_range.bits}" for q in quants})  # post2-4
    size_mb = out.stat().st_size / 1e6
    storage = "int8 weights" if args.int8_weights else "packed weights"
    print(
        f"wrote {out}: {size_mb:.2f} MB ({storage}), {len(layers)} quantized layers ({', '.join(methods) or 'float'})"
    )
    if args.no_check:
        print("parity: not checked (--no-check)")
        return 0
    # the quick check: what a deployment runs (see check(quick=True)); `qexport check` is the thorough one
    report = check(model, out, samples=args.samples, reference_samples=0, show_progress=not args.quiet, quick=True)
    native = any("native" in r.name for r in report.runs)
    kernels = ", with the qexport ops' function bodies and with the native kernels" if native else ""
    print(
        f"quick parity check: {args.samples} random inputs, onnxruntime ORT_ENABLE_ALL{kernels}, the first input "
        f"alone, then 8 at a time; the thorough one (256 inputs, ORT_DISABLE_ALL too, onnx's reference evaluator): "
        f"qexport check {args.model} {out}"
    )
    status = _report(report, json_out=False)
    return max(status, _openvino_parity(model, out, plain, args.samples)) if args.target == "openvino" else status


def _openvino_parity(model: torch.nn.Module, out: Path, plain: bytes, samples: int) -> int:
    """The OpenVINO form in OpenVINO against the onnxruntime export it was made from (``plain``) in
    onnxruntime, on the check's random inputs (1 on a failure)."""
    from .export import openvino

    try:
        openvino.import_openvino()
    except QexportError:
        print(f"OpenVINO: not installed, not run ({openvino.INSTALL_HINT}); onnxruntime ran the file above")
        return 0
    result = openvino.run_check(out, openvino.example_feed(model, out, samples), reference=plain)
    print(result.text())
    return 0 if result.passed else 1


def _check(args: argparse.Namespace) -> int:
    inputs: torch.Tensor | dict[str, torch.Tensor] | None = None
    if args.input and args.data:
        raise QexportError("--input and --data both give the check inputs: pass one of them")
    if args.input:
        arrays = _read_inputs(args.input)
        if isinstance(arrays, dict):
            inputs = {name: torch.from_numpy(a) for name, a in arrays.items()}
        else:
            inputs = torch.from_numpy(arrays)
    elif args.data:
        from . import data
        from .evaluate import subset

        images, _ = subset(*data.cifar10("test", args.data), args.samples)
        inputs = data.normalize(images)
    # one PyTorch thread, as in the export: the same wall time on a quiet 2-core machine (ResNet-20 LSQ,
    # 256 inputs: 19.0 s either way, 24 s of CPU instead of 31), 34 s instead of 92 s on a busy one
    with _torch_threads(1):
        report = check(args.model, args.onnx, inputs, samples=args.samples,
                       show_progress=not args.quiet and not args.json)  # fmt: skip
    return _report(report, json_out=args.json)


def _report(report: CheckReport, json_out: bool) -> int:
    print(report.to_json() if json_out else report.table())
    return 0 if report.passed else 1


def _load_array(path: str) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        kind = ".npz archive" if path.endswith(".npz") else ".npy array"
        raise QexportError(f"{path}: not a readable {kind} ({str(exc).splitlines()[0] if str(exc) else exc})") from None


def _read_inputs(specs: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
    """``--input`` values: one ``x.npy`` (a one-input model's array), one ``inputs.npz`` (an array per
    input name), or ``name=file.npy`` for each input."""
    import numpy as np

    named = [s for s in specs if "=" in s]
    if not named:
        if len(specs) != 1:
            raise QexportError("several --input files: name each input, --input NAME=FILE.npy")
        loaded = _load_array(specs[0])
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                try:
                    return {name: loaded[name] for name in loaded.files}
                except (OSError, ValueError) as exc:
                    raise QexportError(f"{specs[0]}: not a readable .npz archive ({exc})") from None
        return loaded
    if len(named) != len(specs):
        raise QexportError("give every --input as NAME=FILE.npy once any is named (or one .npz with every input)")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        name, path = spec.split("=", 1)
        if not name or name in arrays:
            raise QexportError(f"--input {spec}: " + ("input named twice" if name else "no input name before '='"))
        array = _load_array(path)
        if not isinstance(array, np.ndarray):
            raise QexportError(f"--input {spec}: give a .npy array per named input (an .npz stands alone)")
        arrays[name] = array
    return arrays


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from .runtime import InferenceSession

    arrays = _read_inputs(args.input)
    session = InferenceSession(args.model, threads=args.threads or None)
    if isinstance(arrays, np.ndarray):
        if len(session.inputs) != 1:
            names = ", ".join(s.name for s in session.inputs)
            raise QexportError(
                f"{args.model} takes {len(session.inputs)} inputs ({names}): pass --input NAME=FILE.npy for each, "
                "or one .npz holding an array per input name"
            )
        arrays = {session.inputs[0].name: arrays}
    outputs = session.run_dict(arrays)
    if args.output:
        if len(outputs) == 1:
            if args.output.endswith(".npz"):
                np.savez(args.output, **outputs)
            else:
                np.save(args.output, next(iter(outputs.values())))
        elif not args.output.endswith(".npz"):
            raise QexportError(f"{args.model} has {len(outputs)} outputs: write them with --output FILE.npz")
        else:
            np.savez(args.output, **outputs)
        shown = ", ".join(f"{name} {list(y.shape)} {y.dtype}" for name, y in outputs.items())
        print(f"wrote {args.output}: {shown}")
        return 0
    for name, y in outputs.items():
        label = "output" if len(outputs) == 1 else f"output {name}"
        if y.ndim == 2 and y.shape[1] > 1 and np.issubdtype(y.dtype, np.floating):
            print(f"{label} {list(y.shape)}; top-1 per sample: {y.argmax(1).tolist()}")
        else:
            print(f"{label} {list(y.shape)} {y.dtype}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from . import bench, native

    if args.runtime == "openvino":
        from .export.openvino import import_openvino

        import_openvino()  # a one-line error naming the extra when it is missing
    paths = {Path(p).name: p for p in args.models}
    if args.fp32:
        paths = {"fp32 " + Path(args.fp32).name: args.fp32, **paths}
    for p in paths.values():
        if not os.path.isfile(p):
            raise QexportError(f"{p}: no such ONNX file")
        try:
            onnx.checker.check_model(onnx.load(p, load_external_data=False))
        except Exception as exc:  # protobuf DecodeError, ValidationError ...
            raise QexportError(f"{p}: not a valid ONNX model ({type(exc).__name__})") from None
    shape, _ = bench.input_shape(next(iter(paths.values())))
    vocab = bench.vocab_size(next(iter(paths.values())))
    if args.runtime == "openvino":
        version = import_openvino().__version__.split("-")[0]
        print(f"OpenVINO {version} CPU plugin (int8 / float from its compiled graph)")
    else:
        print(f"native kernels: {native.library_path() or 'not built (function bodies run)'}")
    for name, p in paths.items():
        shown = bench.openvino_kernels(p, [1, *shape[1:]]) if args.runtime == "openvino" else bench.optimized_kernels(p)
        print(f"{name}: {shown.text()}")
    for b in args.batch:
        for t in args.threads:
            try:
                feeds = bench.random_feeds(b, shape, vocab)
                timings = bench.time_interleaved(paths, feeds, t, budget_s=args.budget, runtime=args.runtime)
            except (RuntimeError, ValueError, KeyError) as exc:  # onnxruntime's Fail / InvalidArgument ...
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                names = ", ".join(map(str, paths.values()))
                raise QexportError(f"{names}: {args.runtime} cannot run it ({first})") from None
            base = timings[0].median_ms if args.fp32 else None
            print(f"batch {b}, {t} thread(s):")
            for x in timings:
                ratio = f"  {base / x.median_ms:.2f}x vs fp32" if base else ""
                spread = f"(min {x.min_ms:.3f}, max {x.max_ms:.3f}, {x.runs} runs)"
                print(f"  {x.name:40s} {x.median_ms:9.3f} ms {spread}{ratio}")
    return 0


def _zoo(args: argparse.Namespace) -> int:
    for name in zoo.names():
        m = zoo.create(name)
        ex = m.qexport_example
        print(f"{name:12s} {sum(p.numel() for p in m.parameters()):>11,} params  input {ex['shape']} {ex['dtype']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qexport",
        description="Deploy quantization-aware-trained PyTorch models (LSQ, NIPQ, ASQ, POST).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"qexport {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("inspect", help="per-layer method, bits, scales (and storage, size) of a model.pt or .onnx")
    s.add_argument("model")
    s.add_argument("--trust", action="store_true", help="allow code/pickles the file names (trusted files only)")
    s.set_defaults(func=_inspect)

    s = sub.add_parser("eval", help="CIFAR-10 test top-1 of a model.pt (PyTorch, fake-quant)")
    s.add_argument("model")
    s.add_argument("--data", help="path of cifar10-jpeg.tar.gz (default: ../shared/data)")
    s.add_argument("--limit", type=int, default=0, help="evaluate on N images spread over the test set")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--trust", action="store_true")
    s.set_defaults(func=_eval)

    s = sub.add_parser("quantize", help="quantize a zoo model or float checkpoint and calibrate it (no training)")
    s.add_argument("arch", choices=zoo.names())
    s.add_argument("--init", help="float qexport checkpoint to start from (default: random weights)")
    s.add_argument("--weight", default="lsq", help="lsq | nipq | post | pot | none")
    s.add_argument("--act", default="lsq", help="lsq | nipq | asq | none")
    s.add_argument("--bits", type=int, default=4)
    s.add_argument("--placement", default="deployable", choices=["deployable", "paper"])
    s.add_argument("--calib", default="random", choices=["random", "cifar10"])
    s.add_argument("--calib-images", type=int, default=256)
    s.add_argument("--data", help="path of cifar10-jpeg.tar.gz")
    s.add_argument("--trust", action="store_true")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_quantize)

    s = sub.add_parser("import", help="import a checkpoint trained with the official NIPQ or ASQ-POST code")
    s.add_argument("checkpoint", help="the official .pth / .ckpt / .pth.tar file")
    s.add_argument("--from", dest="source", required=True, choices=["nipq", "asq-post"])
    s.add_argument("--bits", type=int, help="ASQ-POST bit-width, when the file's 'arch' entry does not name it")
    s.add_argument("--arch", help="the architecture expected (nipq: mobilenetv2, asq-post: resnet18)")
    s.add_argument("--nipq-act", choices=["on", "off"], help="NIPQ: was activation quantization on (--a_scale > 0)?")
    s.add_argument("--asq-weights", choices=["post", "lsq"], help="ASQ-POST: POST (Q_ResNet18_PA) or LSQ weights")
    s.add_argument("--image-size", type=int, default=224, help="input side the model.pt records (default 224)")
    s.add_argument("--no-measure", action="store_true", help="skip measuring qexport's eval against the official")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_import)

    s = sub.add_parser(
        "export", help="export a model.pt to ONNX and check parity (also: qexport model.pt --format onnx)"
    )
    s.add_argument("model")
    s.add_argument("--format", default="onnx")
    s.add_argument("-o", "--output", help="output path (default: the model path with .onnx)")
    s.add_argument("--opset", type=int, default=21, help="21 or newer (25 for int2 weights with --packed)")
    s.add_argument(
        "--int8-weights", action="store_true",
        help="store every uniform weight as int8 (default: int4, or int2 at opset 25, for weights of <=4 / 2 bits; "
        "onnxruntime widens them at load time and runs the same integer kernels)",
    )  # fmt: skip
    s.add_argument(
        "--adds", choices=ADDS, default="auto",
        help="residual adds of quantized tensors: fused (onnxruntime's QLinearAdd, fastest, a rare code one off), "
        "exact (dequantize -> add -> quantize, as the fake-quant model) or auto (exact with ASQ, else fused)",
    )  # fmt: skip
    s.add_argument(
        "--target", choices=TARGETS, default="onnxruntime",
        help="onnxruntime (default): qexport ops with native kernels; openvino: the form OpenVINO's CPU plugin runs "
        "(function bodies inlined, no QuantizeLinear of constants), checked in onnxruntime and, if installed, "
        "in OpenVINO against it",
    )  # fmt: skip
    s.add_argument("--no-check", action="store_true", help="skip the parity check")
    s.add_argument("--samples", type=int, default=16, help="random inputs for the quick parity check")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--trust", action="store_true")
    s.set_defaults(func=_export)

    s = sub.add_parser("check", help="parity of an ONNX model with its model.pt, code for code")
    s.add_argument("model")
    s.add_argument("onnx")
    s.add_argument("--samples", type=int, default=256)
    s.add_argument("--data", help="CIFAR-10 archive: check on test images instead of random inputs")
    s.add_argument(
        "--input", action="append", metavar="[NAME=]FILE",
        help="check on these inputs: x.npy (one-input model), NAME=FILE.npy per input (repeat), or one .npz "
        "with an array per input name; samples in dimension 0",
    )  # fmt: skip
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_check)

    s = sub.add_parser("run", help="run an exported model in onnxruntime (CPU) on .npy / .npz inputs")
    s.add_argument("model")
    s.add_argument(
        "--input", action="append", required=True, metavar="[NAME=]FILE",
        help="x.npy for a one-input model (e.g. float32 [N, 3, 32, 32]); NAME=FILE.npy for each input of a "
        "model with several (repeat --input), or one .npz holding an array per input name",
    )  # fmt: skip
    s.add_argument("--output", help="write the output here: .npy (one output) or .npz (every output by name)")
    s.add_argument("--threads", type=int, default=0)
    s.set_defaults(func=_run)

    s = sub.add_parser(
        "bench", help="time ONNX models in onnxruntime or OpenVINO (interleaved), with the kernels each chose"
    )
    s.add_argument("models", nargs="+", help="ONNX files (same input)")
    s.add_argument("--fp32", help="the FP32 ONNX model of the same network: speed-ups are against it")
    s.add_argument("--batch", type=int, nargs="+", default=[1])
    s.add_argument("--threads", type=int, nargs="+", default=[1])
    s.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per configuration")
    s.add_argument(
        "--runtime", choices=RUNTIMES, default="onnxruntime",
        help="onnxruntime (CPU, native qexport kernels where built) or openvino (CPU plugin, same --threads; "
        "for files exported with --target openvino, or any plain ONNX file such as onnxruntime's own int8 model)",
    )  # fmt: skip
    s.set_defaults(func=_bench)

    s = sub.add_parser("zoo", help="list the model zoo")
    s.set_defaults(func=_zoo)

    s = sub.add_parser("support", help="what exports, what runs as integer kernels, what stays float")
    s.add_argument("op", nargs="?", help="an ATen op (aten.gelu, upsample_nearest2d.vec): does torch.onnx write it?")
    s.add_argument("--markdown", action="store_true", help="the page docs/SUPPORTED.md is")
    s.set_defaults(func=_support)
    return p


def _support(args: argparse.Namespace) -> int:
    from . import support

    if args.op:
        ok = support.lowers(args.op)
        verdict = "torch.onnx writes it (float, unless a quantized unit)" if ok else "no ONNX lowering"
        print(f"{args.op}: {verdict}")
        return 0 if ok else 1
    print(support.text(markdown=args.markdown), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".pt") and "--format" in argv:  # qexport model.pt --format onnx
        argv = ["export", *argv]
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    for name in ("weight", "act"):
        if getattr(args, name, None) == "none":
            setattr(args, name, None)
    try:
        return int(args.func(args))
    except QexportError as exc:
        print(f"qexport: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("qexport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
