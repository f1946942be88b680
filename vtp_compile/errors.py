"""The exceptions vtp raises: :class:`OptionError` for bad options and unusable
configurations, :class:`PassError` for a bug in a pass.

``torch.compile`` calls a backend lazily, at the first call of the compiled model, and wraps
whatever the backend raises in ``BackendCompilerFailed`` (a ``RuntimeError``), except
exceptions derived from Dynamo's ``ShortenTraceback``, which it re-raises as they are. So
:class:`OptionError` is both a ``ValueError`` (what the README promises) and such an exception:
``except ValueError`` catches it at the first call, and ``vtp_compile.PruneConfig.from_options``
raises it before anything is compiled.
"""
from __future__ import annotations

from torch._dynamo.exc import ShortenTraceback


class OptionError(ValueError, ShortenTraceback):
    """A bad ``options`` value, or a configuration the model cannot run (names what is valid)."""

    def __init__(self, message: str):
        ShortenTraceback.__init__(self, message, first_useful_frame=None)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PassError(ShortenTraceback):
    """Something a pass raised that is neither a bad option nor a graph vtp declined to rewrite:
    a bug in vtp (a ``RuntimeError``). Names the pass; the original exception is the
    ``__cause__``."""

    def __init__(self, pass_name: str | None, cause: BaseException):
        self.pass_name = pass_name
        msg = (f"vtp: internal error in pass {pass_name!r}: {type(cause).__name__}: {cause}\n"
               "This is a bug in vtp, not a problem with your options. Please report it with the "
               "graphs VTP_DUMP_DIR=<folder> writes (README: Debugging).")
        ShortenTraceback.__init__(self, msg, first_useful_frame=None)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
