"""Deploy a packed image the way curtin does: a staging tree first, then a raw disk per boot.

What curtin does with a custom TGZ (canonical/curtin):

* ``commands/extract.py`` (``extract_root_tgz_url``): unpack with
  ``tar --xattrs --xattrs-include=* -Sxpf - --numeric-owner -C TARGET`` (gzip,
  bzip2 or xz; never zstd);
* ``commands/block_meta.py`` (``fstab_line_for_data``) and ``curthooks.copy_fstab``:
  ``/etc/fstab`` names the root by ``/dev/disk/by-uuid/<uuid>``;
* ``curthooks.install_kernel``: a kernel (``linux-generic`` when MAAS names none)
  is installed with apt into a target that has none;
* ``curthooks.update_initramfs``: ``update-initramfs -u -k VER`` (``-c`` for a
  kernel without one) after the fstab is written, so the initramfs gets fsck;
  a target with kernels but no initramfs tool is an error.

Then MAAS's late_commands check the target (``preseed.get_custom_image_dependency_validation``
in canonical/maas): ``cloud-init --version`` and ``netplan info`` must succeed.
All of it runs in the staging tree (through :class:`~maas_chroot.Chroot` for the
commands inside it), never in the image; the disk is then filled with
``mke2fs -d`` at the partition's offset, with no loop device and no mount.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import formats, rootfs, run
from ..chroot import Chroot
from ..errors import ArchiveError, BootTestError, CommandError
from ..rootfs.walk import ENTRY, walk
from . import guest
from .scratch import Scratch

log = logging.getLogger(__name__)

#: curtin's extraction flags, verbatim (the archive and -C TARGET go around them).
CURTIN_TAR = ("--xattrs", "--xattrs-include=*", "-Sxpf")
FSTAB = ("# / was on /dev/vda1 during curtin installation\n"
         "/dev/disk/by-uuid/{uuid} / ext4 defaults 0 1\n")
#: Offline, the root's UUID resolves to no device, so initramfs-tools' fsck hook
#: cannot probe the root's type; this hint tells it (for the one run only).
FSTYPE_HINT = "/etc/initramfs-tools/conf.d/zz-maas-chroot-root-fstype"
PARTITION_START = 2048  # sectors: the partition starts at 1 MiB, as curtin aligns it
SECTOR = 512
MAAS_WORDS = {"cloud-init": "cloud-init not detected, MAAS will not be able to configure "
                            "this machine properly",
              "netplan": "netplan not detected, MAAS will not be able to configure this "
                         "machine properly"}


@dataclass(frozen=True)
class LateCommand:
    """One of MAAS's late_commands, run in the deployed target before it boots."""

    argv: tuple[str, ...]
    returncode: int
    output: str

    @property
    def verdict(self) -> str | None:
        """Why MAAS would fail the deployment, or None when the command succeeded."""
        if self.returncode == 0:
            return None
        words = MAAS_WORDS["netplan" if self.argv[0] == "netplan" else "cloud-init"]
        return (f"MAAS would fail this deployment because `{' '.join(self.argv)}` fails in the "
                f"target (exit {self.returncode}): {words}")


@dataclass(frozen=True)
class Staged:
    """A deployed copy of the image, ready to be written to disks."""

    root: Path
    os_name: str
    kernel_version: str
    kernel: str  # in-root path
    kernel_source: str
    late_commands: tuple[LateCommand, ...]
    curtin_errors: tuple[str, ...]
    baked_machine_id: str | None
    tree_bytes: int
    times: dict[str, float] = field(default_factory=dict)


def check_image(image: Path) -> str:
    """The compression of ``image`` if curtin can deploy it; :class:`ArchiveError` if not."""
    if not image.is_file():
        raise ArchiveError(f"cannot boot-test {image}: no such file", path=image,
                           hint="give the packed image (maas-chroot build -o FILE)")
    found = formats.detect(formats.read_head(image))
    kind = formats.compression(found) if found else None
    if kind is not None and kind.curtin:
        return kind.name
    if kind is not None:
        why, hint = (f"it is a {kind.name} tar, which curtin cannot unpack",
                     "repack it with gzip: maas-chroot pack ROOT OUT.tgz")
    elif found == "tar":
        why, hint = "it is an uncompressed tar; MAAS takes tgz, tbz or txz", \
            "compress it: maas-chroot pack ROOT OUT.tgz"
    elif found == "squashfs":
        why, hint = "it is a squashfs (a source, not a MAAS image)", \
            "build an image from it: maas-chroot build IMAGE.squashfs -o OUT.tgz"
    else:
        why, hint = "it is not a tar archive", "give a TGZ made by maas-chroot build or pack"
    raise ArchiveError(f"cannot boot-test {image}: {why}", path=image, hint=hint)


def stage(image: Path, root: Path, *, kernel: str | None, progress: bool | None) -> Staged:
    """Unpack ``image`` into ``root`` as curtin would, install a kernel if it has none, and
    run MAAS's late_commands there. :func:`finish` then builds the initramfs."""
    times: dict[str, float] = {}
    start = time.monotonic()
    run.run(["tar", *CURTIN_TAR, image, "--numeric-owner", "-C", root])
    times["extract"] = time.monotonic() - start
    tree = _tree_bytes(root)
    os_release = _os_release(root)
    baked = _baked_machine_id(root)
    guest_files(root, uuid="00000000-0000-0000-0000-000000000000")  # make_disk sets the UUID
    found = _kernels(root)
    source = "the image's own"
    with Chroot(root, network="host" if not found else "none") as ch:
        if not found:
            start = time.monotonic()
            pkg = kernel or _default_kernel(os_release)
            source = f"{pkg}, installed into the deployed copy as curtin does"
            _install_kernel(ch, image, pkg, progress)
            found = _kernels(root)
            times["kernel"] = time.monotonic() - start
            if not found:
                raise BootTestError(f"installing {pkg} in the deployed copy of {image} gave no "
                                    "/boot/vmlinuz-*", reason="no-kernel",
                                    hint="pass the kernel package of this distribution "
                                         "(kernel='linux-image-amd64', --kernel PKG)")
        late = tuple(_late(ch, argv) for argv in (("cloud-init", "--version"),
                                                  ("netplan", "info")))
    version = found[-1]
    return Staged(root=root, os_name=os_release.get("PRETTY_NAME", "unknown"),
                  kernel_version=version, kernel=f"/boot/vmlinuz-{version}",
                  kernel_source=source, late_commands=late,
                  curtin_errors=_initramfs_tool_missing(root, found),
                  baked_machine_id=baked, tree_bytes=tree, times=times)


def finish(staged: Staged) -> str | None:
    """curtin's last curthook: the initramfs, built now that the fstab names the root.

    Returns the in-root path of the initrd to boot with (None: the kernel boots alone).
    """
    start = time.monotonic()
    root, versions = staged.root, _kernels(staged.root)
    if rootfs.lstat(root, "/usr/sbin/update-initramfs") is not None:
        with Chroot(root, network="none") as ch:
            ch.temporary_file(FSTYPE_HINT, "FSTYPE=ext4\n")
            for version in versions:
                has = rootfs.lstat(root, f"/boot/initrd.img-{version}") is not None
                ch.run(["update-initramfs", "-u" if has else "-c", "-k", version],
                       capture=True)
        staged.times["initramfs"] = time.monotonic() - start
    initrd = f"/boot/initrd.img-{staged.kernel_version}"
    return initrd if rootfs.lstat(root, initrd) is not None else None


def guest_files(root: Path, *, uuid: str) -> None:
    """Write what curtin and the boot test put into the target: fstab, datasource, reporter."""
    rootfs.write_file(root, "/etc/fstab", FSTAB.format(uuid=uuid), mode=0o644)
    rootfs.write_file(root, guest.DATASOURCE_CFG, guest.DATASOURCE, mode=0o644)
    rootfs.write_file(root, guest.REPORTER, guest.REPORTER_TEXT, mode=0o755)
    rootfs.write_file(root, guest.UNIT, guest.UNIT_TEXT, mode=0o644)
    rootfs.makedirs(root, os.path.dirname(guest.UNIT_LINK))
    rootfs.symlink(root, guest.UNIT_LINK, guest.UNIT)


def make_disk(staged: Staged, disk: Scratch, *, uuid: str, size: int) -> None:
    """Partition the sparse ``disk`` and fill its ext4 root from the staging tree."""
    rootfs.write_file(staged.root, "/etc/fstab", FSTAB.format(uuid=uuid), mode=0o644)
    os.ftruncate(disk.fd, 0)
    os.ftruncate(disk.fd, size)
    run.run(["sfdisk", "--quiet", disk.path],
            input=f"label: dos\nstart={PARTITION_START}, type=83\n")
    table = json.loads(run.run(["sfdisk", "--json", disk.path], capture=True).stdout)
    part = table["partitiontable"]["partitions"][0]
    blocks = int(part["size"]) * SECTOR // 4096
    run.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d", staged.root,
             "-E", f"offset={int(part['start']) * SECTOR}", "-U", uuid, "-L", "rootfs",
             disk.path, str(blocks)])


def disk_size(staged: Staged) -> int:
    """A sparse disk with room to spare for the first boot (it costs only what is written)."""
    mib = 1 << 20
    return max(4096 * mib, -(-(2 * staged.tree_bytes + 1024 * mib) // mib) * mib)


def read_disk(disk: Scratch, path: str) -> bytes | None:
    """The content of ``path`` on the disk's root filesystem (read with debugfs, no mount)."""
    device = f"{disk.path}?offset={PARTITION_START * SECTOR}"
    done = run.run(["debugfs", "-R", f"cat {path}", device], capture=True, check=False,
                   text=False)
    err = done.stderr.decode("utf-8", "replace") if done.stderr else ""
    if done.returncode != 0 or "File not found" in err:
        return None
    return bytes(done.stdout)


def list_disk(disk: Scratch, directory: str) -> list[str]:
    """The names in ``directory`` on the disk's root filesystem."""
    device = f"{disk.path}?offset={PARTITION_START * SECTOR}"
    done = run.run(["debugfs", "-R", f"ls -p {directory}", device], capture=True, check=False)
    names = []
    for line in (done.stdout or "").splitlines():
        fields = line.strip().split("/")
        if len(fields) >= 7 and fields[5] not in (".", ".."):
            names.append(fields[5])
    return sorted(names)


# --- inside the staging tree ---------------------------------------------------------------


def _kernels(root: Path) -> list[str]:
    """Kernel versions with a regular /boot/vmlinuz-VERSION file, oldest first."""
    try:
        fd = rootfs.open_in_root(root, "/boot", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        names = os.listdir(fd)
        found = [n.removeprefix("vmlinuz-") for n in names if n.startswith("vmlinuz-")
                 and stat.S_ISREG(os.stat(n, dir_fd=fd, follow_symlinks=False).st_mode)]
    finally:
        os.close(fd)
    return sorted(found, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    parts = version.replace("-", ".").split(".")
    return [(int(p), "") if p.isdigit() else (-1, p) for p in parts]


def _os_release(root: Path) -> dict[str, str]:
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = rootfs.read_file(root, path).decode("utf-8", "replace")
        except OSError:
            continue
        pairs = (line.partition("=") for line in text.splitlines())
        return {k.strip(): v.strip().strip("\"'") for k, sep, v in pairs if sep}
    return {}


def _default_kernel(os_release: dict[str, str]) -> str:
    """What curtin installs when MAAS names no kernel: ``linux-generic`` on Ubuntu."""
    return "linux-generic" if os_release.get("ID") == "ubuntu" else "linux-image-amd64"


def _install_kernel(ch: Chroot, image: Path, pkg: str, progress: bool | None) -> None:
    if rootfs.lstat(ch.root, "/usr/bin/apt-get") is None:
        raise BootTestError(f"{image} has no kernel (no /boot/vmlinuz-*) and no apt-get to "
                            "install one in the deployed copy, as curtin would",
                            reason="no-kernel",
                            hint="install a kernel in the image (--install linux-image-amd64, "
                                 "or linux-generic on Ubuntu)")
    try:
        ch.apt.update(progress=progress)
        ch.apt.install([pkg], progress=progress)
    except CommandError as e:
        raise BootTestError(f"{image} has no kernel, and installing {pkg} into the deployed "
                            f"copy failed, as curtin's would: {e.message}", reason="no-kernel",
                            hint="install a kernel in the image, or pass the right package "
                                 "(kernel=PKG, --kernel PKG); curtin needs the image's apt "
                                 "mirror to install one") from e


def _initramfs_tool_missing(root: Path, versions: list[str]) -> tuple[str, ...]:
    """curtin's error for kernels without initramfs and nothing to build one."""
    if rootfs.lstat(root, "/usr/sbin/update-initramfs") is not None or \
            all(rootfs.lstat(root, f"/boot/initrd.img-{v}") is not None for v in versions):
        return ()
    return (f"curtin would fail this deployment: the image has the kernel {versions[-1]} but "
            "no update-initramfs (or dracut) to build its initramfs "
            "(curthooks.update_initramfs); install initramfs-tools",)


def _late(ch: Chroot, argv: tuple[str, ...]) -> LateCommand:
    done = ch.run(list(argv), check=False, capture=True)
    output = "\n".join(p.strip() for p in (done.stdout, done.stderr) if p and p.strip())
    return LateCommand(argv, done.returncode, output)


def _baked_machine_id(root: Path) -> str | None:
    try:
        value = rootfs.read_file(root, "/etc/machine-id", follow=False).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value if value and value != "uninitialized" else None


def _tree_bytes(root: Path) -> int:
    """The apparent size of the regular files of the tree."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sum(node.st.st_size for node in walk(fd, str(root))
                   if node.kind == ENTRY and stat.S_ISREG(node.st.st_mode))
    finally:
        os.close(fd)
