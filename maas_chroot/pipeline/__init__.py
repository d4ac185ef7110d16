"""The pipeline stage: ``build()``, the :class:`BuildSpec` that drives it, what it returns.

:mod:`.spec` holds the value and its checks, :mod:`.builder` the run of the steps,
:mod:`.result` the :class:`BuildResult`.
"""

from .builder import build
from .result import BuildResult
from .spec import BuildSpec

__all__ = ["BuildResult", "BuildSpec", "build"]
