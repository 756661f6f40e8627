"""The custom-op domain every qexport operator lives in, and the standard opset its bodies use."""

from onnxscript import opset21 as op
from onnxscript import script
from onnxscript.values import Opset

DOMAIN = "qexport"
VERSION = 1
QX = Opset(DOMAIN, VERSION)


def qexport_function(fn):
    """Compile ``fn`` into an ONNX function in the qexport domain (bodies use standard opset 21)."""
    return script(QX, default_opset=op)(fn)


__all__ = ["DOMAIN", "QX", "VERSION", "op", "qexport_function"]
