"""Running an exported model: an onnxruntime CPU session with qexport's input checks and, when built,
the native kernels of the qexport ops (qexport/native.py); without them the ops' ONNX function bodies
run and a one-line notice says so.

``InferenceSession`` is a drop-in ``onnxruntime.InferenceSession``: ``get_inputs()``,
``get_outputs()``, ``get_modelmeta()`` and ``run(output_names, input_feed, run_options=None)``
behave as onnxruntime's (anything else is forwarded to the onnxruntime session), except that a bad
feed -- an unknown or missing input name, a wrong dtype, rank or fixed dimension, inputs that
disagree on a shared dynamic dimension (the batch), NaN or infinite floats -- raises a one-line
:class:`~qexport.errors.QexportError` before anything runs.  Two conveniences: ``run(x)`` on a
one-input model returns the first output array, and ``run_dict(feed)`` returns every output by name.

The session keeps no per-call state (the input descriptions are read once, at construction), so
one session may serve several threads at once, as onnxruntime's does."""

from __future__ import annotations

import os
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import onnx
import onnxruntime as ort

from .errors import QexportError
from .native import register
from .ops import uses_qexport_ops

# onnxruntime's type strings -> numpy dtypes (the tensor types an exported model's inputs can have)
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    f"tensor({name})": np.dtype(dtype)
    for name, dtype in [
        ("float", np.float32), ("double", np.float64), ("float16", np.float16), ("int64", np.int64),
        ("int32", np.int32), ("int16", np.int16), ("int8", np.int8), ("uint64", np.uint64),
        ("uint32", np.uint32), ("uint16", np.uint16), ("uint8", np.uint8), ("bool", np.bool_),
    ]
}  # fmt: skip
# session options that already carry the native library: registering it twice on the same options
# makes onnxruntime refuse every later session ("Domain already set in registry")
_REGISTERED: weakref.WeakSet[ort.SessionOptions] = weakref.WeakSet()


@dataclass(frozen=True)
class InputSpec:
    """One graph input as the session checks it: name, onnxruntime type, numpy dtype (None when
    qexport does not know the type: not checked) and shape (int: fixed; str: a named dynamic
    dimension such as ``batch``; None: unnamed dynamic)."""

    name: str
    type: str
    dtype: np.dtype[Any] | None
    shape: tuple[int | str | None, ...]

    def shown(self) -> str:
        dims = ["N" if d == "batch" else "?" if d is None else str(d) for d in self.shape]
        return f"[{', '.join(dims)}]"


def _specs(session: ort.InferenceSession) -> tuple[InputSpec, ...]:
    return tuple(
        InputSpec(
            i.name, i.type, NUMPY_TYPES.get(i.type), tuple(d if isinstance(d, (int, str)) else None for d in i.shape)
        )
        for i in session.get_inputs()
    )


def _load_checked(path_or_bytes: str | bytes | os.PathLike[str]) -> onnx.ModelProto:
    """The model, parsed and checked by onnx: a missing or broken file is a one-line QexportError."""
    if isinstance(path_or_bytes, (bytes, bytearray)):
        where = "the ONNX bytes"
        load = lambda: onnx.load_from_string(bytes(path_or_bytes))  # noqa: E731
    else:
        where = str(path_or_bytes)
        if not os.path.isfile(path_or_bytes):
            raise QexportError(f"{where}: no such ONNX file")
        load = lambda: onnx.load(where, load_external_data=False)  # noqa: E731
    try:
        proto = load()
        onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, DecodeError ...
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise QexportError(f"{where}: not a valid ONNX model ({first})") from None
    return proto


def validate_feed(
    specs: Sequence[InputSpec], feed: Mapping[str, Any], overridable: Collection[str] = ()
) -> dict[str, Any]:
    """The feed to run (a new dict), or a one-line QexportError naming the input and what to do when
    ``feed`` does not fit the model's inputs ``specs``.  Nested lists and scalars become arrays of
    the input's type, as onnxruntime converts them; onnxruntime's OrtValues, and the ``overridable``
    initializers (graph inputs with a default, which onnxruntime lets a feed replace), pass unchecked."""
    if not isinstance(feed, Mapping):
        raise QexportError(
            f"the input feed is a {type(feed).__name__}: pass a dict of input name -> numpy array, "
            "e.g. run(None, {" + ", ".join(f"'{s.name}': ..." for s in specs) + "})"
        )
    names = [s.name for s in specs]
    unknown = [k for k in feed if k not in names and k not in overridable]
    if unknown:
        raise QexportError(f"the model has no input named {unknown[0]!r}: its inputs are {', '.join(names)}")
    missing = [n for n in names if n not in feed]
    if missing:
        raise QexportError(f"input {missing[0]!r} is missing from the feed: the model takes {', '.join(names)}")
    sizes: dict[str, tuple[str, int]] = {}  # named dynamic dimension -> (first input, its size)
    prepared: dict[str, Any] = {k: v for k, v in feed.items() if k not in names}  # overridable initializers
    for spec in specs:
        x = prepared[spec.name] = feed[spec.name]
        if isinstance(x, ort.OrtValue):
            continue
        if not isinstance(x, np.ndarray):
            try:
                x = prepared[spec.name] = np.asarray(x, dtype=spec.dtype)
            except (TypeError, ValueError):
                raise QexportError(
                    f"input {spec.name!r} is a {type(feed[spec.name]).__name__} that is no {spec.type} array: "
                    f"pass a numpy array of shape {spec.shown()}"
                ) from None
        if spec.dtype is not None and x.dtype != spec.dtype:
            raise QexportError(
                f"input {spec.name!r} has dtype {x.dtype}; the model takes {spec.type}: convert it first "
                f"(x.astype(np.{spec.dtype.name}))"
            )
        fits = x.ndim == len(spec.shape) and all(
            not isinstance(d, int) or d == s for d, s in zip(spec.shape, x.shape, strict=True)
        )
        if not fits:
            raise QexportError(f"input {spec.name!r} has shape {list(x.shape)}; the model takes {spec.shown()}")
        for d, s in zip(spec.shape, x.shape, strict=True):
            if isinstance(d, str):
                first, size = sizes.setdefault(d, (spec.name, s))
                if size != s:
                    raise QexportError(
                        f"inputs {first!r} and {spec.name!r} disagree on dimension '{d}' ({size} vs {s}): "
                        "give every input the same size there"
                    )
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise QexportError(f"input {spec.name!r} contains NaN or infinite values: clean or clip it first")
    return prepared


class InferenceSession:
    """``InferenceSession(path_or_bytes, sess_options=None, providers=None, threads=None)``: an
    onnxruntime session (CPU unless ``providers`` says otherwise) with the native qexport kernels
    registered on its options (``sess_options`` when given: it can serve several sessions);
    ``threads`` sets the intra-op thread count on them."""

    def __init__(
        self,
        path_or_bytes: str | bytes | os.PathLike[str],
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        threads: int | None = None,
        *,
        provider_options: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        proto = _load_checked(path_or_bytes)
        options = sess_options if sess_options is not None else ort.SessionOptions()
        if sess_options is None:
            options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if options in _REGISTERED:
            self.native = True
        else:
            self.native = register(options, quiet=not uses_qexport_ops(proto))
            if self.native:
                _REGISTERED.add(options)
        model = bytes(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
        self.session = ort.InferenceSession(
            model, options, providers=list(providers or ["CPUExecutionProvider"]), provider_options=provider_options
        )
        self.inputs = _specs(self.session)
        self.overridable = frozenset(i.name for i in self.session.get_overridable_initializers())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    # -- onnxruntime's API ---------------------------------------------------------------------------
    def get_inputs(self) -> list[ort.NodeArg]:
        return self.session.get_inputs()

    def get_outputs(self) -> list[ort.NodeArg]:
        return self.session.get_outputs()

    def get_modelmeta(self) -> ort.ModelMetadata:
        return self.session.get_modelmeta()

    def __getattr__(self, name: str) -> Any:  # get_providers, get_session_options, run_with_iobinding ...
        if name == "session":  # not built yet (the constructor failed): no recursion
            raise AttributeError(name)
        return getattr(self.session, name)

    @overload
    def run(self, output_names: np.ndarray) -> np.ndarray: ...

    @overload
    def run(
        self,
        output_names: Sequence[str] | None,
        input_feed: Mapping[str, Any],
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray]: ...

    def run(
        self,
        output_names: Sequence[str] | np.ndarray | None,
        input_feed: Mapping[str, Any] | None = None,
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray] | np.ndarray:
        """``run(output_names, input_feed, run_options=None)`` as onnxruntime (``None``: every
        output), returning a list of arrays; or ``run(x)`` on a one-input model: its first output."""
        if isinstance(output_names, np.ndarray) and input_feed is None:
            if len(self.inputs) != 1:
                names = ", ".join(s.name for s in self.inputs)
                raise QexportError(
                    f"run(x) is for one-input models; this one takes {len(self.inputs)} ({names}): "
                    "use run(None, {name: array, ...})"
                )
            return self.run(None, {self.inputs[0].name: output_names})[0]
        if input_feed is None:
            given = "no input feed" if output_names is None else f"a {type(output_names).__name__}"
            raise QexportError(
                f"run() got {given}: call run(output_names, {{name: array, ...}}), or run(x) with a numpy array"
            )
        if isinstance(output_names, (str, np.ndarray)):
            raise QexportError("output_names must be a list of output names or None")
        feed = validate_feed(self.inputs, input_feed, self.overridable)
        if output_names is not None:
            unknown = [n for n in output_names if n not in self.output_names]
            if unknown:
                raise QexportError(
                    f"the model has no output named {unknown[0]!r}: its outputs are {', '.join(self.output_names)}"
                )
        return self.session.run(None if output_names is None else list(output_names), feed, run_options)

    def run_dict(
        self, input_feed: Mapping[str, Any], run_options: ort.RunOptions | None = None
    ) -> dict[str, np.ndarray]:
        """Every output, by name."""
        return dict(zip(self.output_names, self.run(None, input_feed, run_options), strict=True))


__all__ = ["NUMPY_TYPES", "InferenceSession", "InputSpec", "validate_feed"]
