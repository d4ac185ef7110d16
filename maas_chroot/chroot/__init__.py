"""The chroot session: commands in private namespaces, apt, and recovery after a crash.

:mod:`.session` holds :class:`Chroot` and :func:`recover`; each command runs through
the helper :mod:`.nsexec` (own mount and PID namespaces, and with ``network="none"`` the
loopback-only namespace of :mod:`.netns`); :mod:`.journal` records what a session must
undo; :mod:`.checks` validates roots and binds; :mod:`.apt` (with :mod:`.aptstatus`)
runs apt-get inside; :mod:`.copyin` copies host files in.
"""

from .apt import Apt, AptResult
from .checks import Bind
from .session import Chroot, Network, RecoverReport, Terminated, recover

__all__ = ["Apt", "AptResult", "Bind", "Chroot", "Network", "RecoverReport", "Terminated",
           "recover"]
