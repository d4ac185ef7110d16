"""The chroot session: commands in private namespaces, apt, and recovery after a crash.

:mod:`.session` holds :class:`Chroot` (:mod:`.signals`: SIGTERM unwinds it) and
:mod:`.recovery` :func:`recover`. Each command runs through the helper :mod:`.nsexec`
(own mount and PID namespaces, and with ``network="none"`` the loopback-only namespace
of :mod:`.netns`); :mod:`.journal` records what a session must undo; :mod:`.checks`
validates roots and :mod:`.binds` the extra bind mounts; :mod:`.apt` (with
:mod:`.aptstatus`) runs apt-get inside; :mod:`.copyin` copies host files in.
"""

from .apt import Apt, AptResult
from .binds import Bind
from .recovery import RecoverReport, recover
from .session import Chroot, Network
from .signals import Terminated

__all__ = ["Apt", "AptResult", "Bind", "Chroot", "Network", "RecoverReport", "Terminated",
           "recover"]
