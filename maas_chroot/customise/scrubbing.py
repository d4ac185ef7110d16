"""Scrub a rootfs so that every machine MAAS deploys from it is unique and clean.

Operations are named in the style of virt-sysprep (see :data:`OPERATIONS`) and
each can be skipped with ``keep=``. Safety rules, for every operation:

* every path is resolved inside the root (``openat2(RESOLVE_IN_ROOT)`` via
  :mod:`maas_chroot.rootfs`), so no symlink in the image, absolute or ``..``,
  leads outside it;
* the thing scrubbed is never followed: a symlink is removed as a link, never
  truncated through, and a directory whose *contents* are cleared (``/tmp``,
  ``/var/log``, apt lists) is left alone when it is itself a symlink, since
  ``/tmp -> ../../..`` would otherwise name the whole image;
* no directory on another filesystem is entered, and a root with anything
  mounted below it, with a live :class:`~maas_chroot.Chroot` session, or with
  the journal of a killed one, is refused; sysprep holds the session lock, so no
  session can start on the root while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable

from .. import progress as _progress
from .. import rootfs
from ..errors import MountedError, SysprepError
from ..rootfs import lock
from .report import SysprepItem, SysprepOperation, SysprepReport
from .scrub import Scrub

__all__ = ["OPERATIONS", "SysprepItem", "SysprepOperation", "SysprepReport", "sysprep"]

log = logging.getLogger(__name__)

FSTAB_HEADER = ("# /etc/fstab: static file system information.\n"
                "# Emptied by maas_chroot.sysprep: MAAS (curtin) writes it at deploy time.\n")

_PROXY_LINE = re.compile(r"^[^#\n]*\bAcquire::(?:https?|ftp|socks5h?)::Proxy\b[^\n]*\n?",
                         re.IGNORECASE | re.MULTILINE)
_ROOT_HOME = (".bash_history", ".cache", ".ssh", ".lesshst", ".python_history", ".viminfo",
              ".wget-hsts")


# --- the operations ----------------------------------------------------------------------


def _machine_id(s: Scrub) -> None:
    st = rootfs.lstat(s.root, "/etc/machine-id")
    if st is not None and stat.S_ISLNK(st.st_mode):
        # Never truncate through a link: put an empty file in its place.
        s.rewrite("/etc/machine-id", "", st, mode=0o444)
        s.notes.append("/etc/machine-id was a symlink: replaced by an empty file")
    else:
        s.truncate("/etc/machine-id")
    st = rootfs.lstat(s.root, "/var/lib/dbus/machine-id")
    if st is not None and stat.S_ISREG(st.st_mode):  # a link to /etc/machine-id stays
        s.remove("/var/lib/dbus/machine-id")


def _cloud_init(s: Scrub) -> None:
    for name in ("instance", "instances", "data", "sem"):
        s.remove(f"/var/lib/cloud/{name}")
    s.remove_glob("/var/log", "cloud-init*.log")


def _fstab(s: Scrub) -> None:
    # curtin replaces /etc/fstab at deploy time with its own (a header plus the entries of
    # the machine's storage layout), so entries in the image are never used; the cloud
    # image's LABEL=cloudimg-rootfs line, or a build's own, only mislead. Comments stay out.
    found = s.read_regular("/etc/fstab")
    if found is None:
        return
    text = found[0].decode("utf-8", "replace")
    if any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        s.rewrite("/etc/fstab", FSTAB_HEADER, found[1])


def _os_id(s: Scrub) -> str:
    """The distribution's ``ID`` from the image's os-release (``debian``, ``ubuntu``)."""
    return rootfs.os_release(s.root).get("ID") or "localhost"


def _hostname(s: Scrub) -> None:
    # The distributions' cloud images ship their own name in /etc/hostname (Ubuntu
    # "ubuntu", Debian "debian"); cloud-init sets the machine's name from MAAS at first
    # boot. A bootstrap copies the build host's name (mmdebstrap copies /etc/hostname).
    want = _os_id(s) + "\n"
    st = rootfs.lstat(s.root, "/etc/hostname")
    found = s.read_regular("/etc/hostname")
    if found is not None and found[0].decode("utf-8", "replace") == want \
            and stat.S_IMODE(found[1].st_mode) == 0o644:
        return
    if st is None:
        if s.is_dir("/etc"):
            s.write("/etc/hostname", want)
        return
    old = found[0].decode("utf-8", "replace").strip() if found is not None else "not a file"
    s.rewrite("/etc/hostname", want, st, mode=0o644)
    s.notes.append(f"/etc/hostname was {old!r} (the build host's?): now {want.strip()!r}")


#: What manages /etc/resolv.conf at boot, and the symlink the distribution ships for it.
_RESOLVERS = (("/usr/lib/systemd/systemd-resolved", "../run/systemd/resolve/stub-resolv.conf"),
              ("/sbin/resolvconf", "../run/resolvconf/resolv.conf"))


def _resolv_conf(s: Scrub) -> None:
    # Cloud images never ship a static resolv.conf: Ubuntu's is a symlink to the resolved
    # stub, Debian's is made at boot. A static one is the build host's (mmdebstrap copies
    # it), and networkd without resolved never rewrites it: the deployed machine would keep
    # the build host's nameserver.
    st = rootfs.lstat(s.root, "/etc/resolv.conf")
    if st is not None and stat.S_ISLNK(st.st_mode):
        return
    target = next((link for manager, link in _RESOLVERS if s.exists(manager)), None)
    if target is not None and s.is_dir("/etc"):
        s.link("/etc/resolv.conf", target)
    elif st is not None:
        s.remove("/etc/resolv.conf")
        s.notes.append("/etc/resolv.conf was a static file (the build host's?): removed; "
                       "nothing in the image manages it at boot (install systemd-resolved "
                       "or resolvconf for DNS on the deployed machine)")


#: Debian's default /etc/hosts (what its installer and cloud images write).
HOSTS = ("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
         "ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")


def _hosts(s: Scrub) -> None:
    if rootfs.lstat(s.root, "/etc/hosts") is None and s.is_dir("/etc"):  # a minbase has none
        s.write("/etc/hosts", HOSTS)


def _apt_proxy(s: Scrub) -> None:
    paths = ["/etc/apt/apt.conf"]
    paths += [f"/etc/apt/apt.conf.d/{n}" for n in s.listdir("/etc/apt/apt.conf.d")]
    for path in paths:
        found = s.read_regular(path)
        if found is None:
            continue
        text = found[0].decode("utf-8", "replace")
        rest = _PROXY_LINE.sub("", text)
        if rest == text:
            continue
        meaningful = [ln for ln in rest.splitlines()
                      if ln.strip() and not ln.lstrip().startswith(("#", "//"))]
        if meaningful:
            s.rewrite(path, rest, found[1])
        else:
            s.remove(path)


def _apt_lists(s: Scrub) -> None:
    s.remove_glob("/var/lib/apt/lists", exclude=("partial", "lock"))
    s.remove_glob("/var/lib/apt/lists/partial")


def _apt_cache(s: Scrub) -> None:
    s.remove_glob("/var/cache/apt/archives", "*.deb")
    s.remove_glob("/var/cache/apt/archives/partial")
    s.remove_glob("/var/cache/apt", "*.bin")


def _tmp(s: Scrub) -> None:
    s.remove_glob("/tmp")
    s.remove_glob("/var/tmp")


def _root_home(s: Scrub) -> None:
    for name in _ROOT_HOME:
        s.remove(f"/root/{name}")


_OPS: dict[str, Callable[[Scrub], None]] = {
    "machine-id": _machine_id,
    "cloud-init": _cloud_init,
    "netplan": lambda s: s.remove("/etc/netplan/50-cloud-init.yaml"),
    "fstab": _fstab,
    "hostname": _hostname,
    "resolv-conf": _resolv_conf,
    "hosts": _hosts,
    "ssh-hostkeys": lambda s: s.remove_glob("/etc/ssh", "ssh_host_*"),
    "random-seed": lambda s: s.remove("/var/lib/systemd/random-seed"),
    "apt-proxy": _apt_proxy,
    "apt-lists": _apt_lists,
    "apt-cache": _apt_cache,
    "tmp": _tmp,
    "logs": lambda s: s.truncate_tree("/var/log"),
    "root-home": _root_home,
}

#: Every operation, in the order it runs; pass names to ``keep=`` to skip them.
OPERATIONS: tuple[str, ...] = tuple(_OPS)


def _inspect(s: Scrub) -> tuple[tuple[str, ...], tuple[str, ...], bool, bool]:
    """(warnings, kernels, has cloud-init, has netplan): what MAAS needs from the image."""
    warnings = []
    cloud_init = any(s.exists(p) for p in ("/usr/bin/cloud-init", "/bin/cloud-init"))
    netplan = any(s.exists(p) for p in ("/usr/sbin/netplan", "/sbin/netplan", "/usr/bin/netplan"))
    if not cloud_init:
        warnings.append("cloud-init is not installed: MAAS runs `cloud-init --version` in the "
                        "target and fails the deployment; install the cloud-init package")
    if not netplan:
        warnings.append("netplan is not installed: MAAS runs `netplan info` in the target and "
                        "fails the deployment; install the netplan.io package")
    versions = {*rootfs.kernels(s.root), *s.listdir("/lib/modules")}
    return tuple(warnings), tuple(sorted(versions)), cloud_init, netplan


def _check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise SysprepError(f"sysprep: {root} is not a directory", root=root,
                          hint="pass the directory a rootfs was extracted into")
    mounted = rootfs.mounts_under(root, below=True)  # the root may be a mount of its own
    if mounted:
        raise MountedError(f"sysprep: something is mounted below {root} ({mounted[0]})",
                           path=mounted[0], hint=f"umount -R {mounted[-1]} first")


def sysprep(root: str | os.PathLike[str], *, keep: Iterable[str] = (),
            progress: bool | None = None) -> SysprepReport:
    """Scrub ``root`` for deployment by MAAS; return what was removed and what is missing.

    ``keep`` names operations (from :data:`OPERATIONS`) to skip, e.g.
    ``keep=("ssh-hostkeys", "logs")``. Nothing outside ``root`` is touched.
    """
    top = os.path.abspath(os.fspath(root))
    kept = {keep} if isinstance(keep, str) else set(keep)
    unknown = sorted(kept - set(OPERATIONS))
    if unknown:
        raise SysprepError(f"sysprep: unknown operation(s) in keep: {', '.join(unknown)}",
                           root=top, hint=f"choose from: {', '.join(OPERATIONS)}")
    _check_root(top)
    with contextlib.ExitStack() as stack:
        stack.enter_context(lock.exclusive(top, "sysprep"))  # no session starts meanwhile
        rootfd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, rootfd)
        s = Scrub(top, rootfd)
        results = []
        with _progress.bar(progress, total=len(OPERATIONS), desc="sysprep", unit="op") as bar:
            for name in OPERATIONS:
                bar.set_postfix_str(name, refresh=False)
                if name in kept:
                    results.append(SysprepOperation(name, kept=True))
                else:
                    start = len(s.items)
                    _OPS[name](s)
                    results.append(SysprepOperation(name, tuple(s.items[start:])))
                bar.update(1)
        warnings, kernels, cloud_init, netplan = _inspect(s)
        arch = rootfs.image_arch(top)
    notes = list(dict.fromkeys(s.notes))  # one note per path, in order
    if not kernels:
        notes.append("no kernel is installed (no /boot/vmlinuz-*, no /lib/modules/*): "
                     "MAAS (curtin) installs one at deploy time")
    report = SysprepReport(top, tuple(results), warnings, tuple(notes), kernels, cloud_init,
                           netplan, arch.name if arch is not None else None)
    log.info("sysprep %s: %d items, %s freed", top, len(report.items),
             _progress.human_size(report.freed))
    for w in warnings:
        log.warning("sysprep %s: %s", top, w)
    return report
