"""The pipeline stage: ``build()``, the :class:`BuildSpec` that drives it, what it returns.

:mod:`.spec` holds the value and its checks, :mod:`.builder` the run of the steps,
:mod:`.result` the :class:`BuildResult`; :mod:`.recipe` loads a TOML file of specs
(:class:`Recipe`, with :mod:`.tomlpos` for its line numbers); :mod:`.record` writes the
build record beside each image and tells what changed since; :mod:`.basecache` keeps
each source extracted once, for the copy-on-write rootfs of every later build.
"""

from .builder import build
from .recipe import Recipe
from .result import BuildResult
from .spec import BuildSpec

__all__ = ["BuildResult", "BuildSpec", "Recipe", "build"]
