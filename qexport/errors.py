"""The one exception type qexport raises for bad input: its message is a single line that names
what is wrong and what to do.  The command line prints it without a traceback and exits 2."""


class QexportError(Exception):
    """Bad input or an unsupported request, with a one-line explanation."""
