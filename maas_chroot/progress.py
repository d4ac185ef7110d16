"""Progress reporting: tqdm bars the caller can turn off.

Every long operation takes ``progress=None|True|False``. ``None`` (the
default) shows a bar when a person is watching: stderr is a terminal, or the
code runs in a Jupyter kernel, where ``tqdm.auto`` renders a widget.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    get = getattr(shell, "get_ipython", None)
    ip = get() if get is not None else None
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def enabled(progress: bool | None) -> bool:
    """Resolve the tri-state ``progress`` flag."""
    if progress is not None:
        return progress
    try:
        return sys.stderr.isatty() or _in_notebook()
    except (AttributeError, ValueError):
        return False


def human_size(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'`` (binary units, as the bars show them)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def bar(progress: bool | None, *, total: float | None, desc: str, unit: str = "B",
        **kwargs: Any) -> tqdm[Any]:
    """A tqdm bar (bytes by default, scaled to KiB/MiB), disabled unless :func:`enabled`."""
    opts: dict[str, Any] = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    opts.update(kwargs)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(progress),
                leave=False, dynamic_ncols=True, **opts)
