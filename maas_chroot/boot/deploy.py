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
from ..chroot.netns import dying_with_us
from ..errors import ArchiveError, BootTestError, CommandError, tail
from ..rootfs.walk import ENTRY, walk
from . import guest
from .options import ARCHES
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
#: MAAS's words when a late_command fails (``get_custom_image_dependency_validation``).
MAAS_WORDS = "not detected, MAAS will not be able to configure this machine properly"


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
        return (f"MAAS would fail this deployment because `{' '.join(self.argv)}` fails in the "
                f"target (exit {self.returncode}): {self.argv[0]} {MAAS_WORDS}")


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
    root_mode: int = 0o755  # of the image's top directory (curtin's tar -p applies it)
    root_owner: tuple[int, int] = (0, 0)


def check_image(image: Path) -> str:
    """The compression of ``image`` if curtin can deploy it; :class:`ArchiveError` if not."""
    if not image.is_file():
        raise ArchiveError(f"cannot boot-test {image}: no such file", path=image,
                           hint="give the packed image (maas-chroot build -o FILE)")
    head = formats.read_head(image, 64 * 1024)
    found = formats.detect(head)
    kind = formats.compression(found) if found else None
    if kind is not None and kind.curtin:
        if formats.is_tar(formats.inflate_head(kind, head)):
            return kind.name
        raise ArchiveError(f"cannot boot-test {image}: it is {kind.name} data that holds no tar "
                           "(a disk image, or a damaged file?)", path=image,
                           hint="the boot test takes a root tarball (tgz, tbz, txz); a disk "
                                "image (ddgz...) is deployed by curtin without a tar")
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
    try:
        run.run(dying_with_us(["tar", *CURTIN_TAR, os.fspath(image), "--numeric-owner", "-C",
                               os.fspath(root)]))
    except CommandError as e:
        raise ArchiveError(f"curtin's tar cannot unpack {image}: {tail(e.stderr, 5)}",
                           path=image, hint="the file is damaged or not a root tarball; "
                                            "pack it again") from e
    times["extract"] = time.monotonic() - start
    _check_rootfs(image, root)
    arch = rootfs.image_arch(root)
    if arch is not None and arch.name not in ARCHES:
        raise BootTestError(f"{image} is an {arch.name} image; the boot test boots "
                            f"{', '.join(ARCHES)} images only (qemu-system-x86_64)",
                            reason="arch", hint="upload it without a boot test, or boot-test "
                                                "the amd64 build of the same recipe")
    tree = _tree_bytes(root)
    os_release = rootfs.os_release(root)
    baked = _baked_machine_id(root)
    guest_files(root, uuid="00000000-0000-0000-0000-000000000000")  # make_disk sets the UUID
    found = rootfs.kernels(root)
    source = "the image's own"
    with Chroot(root, network="host" if not found else "none") as ch:
        if not found:
            start = time.monotonic()
            pkg = kernel or _default_kernel(os_release)
            source = f"{pkg}, installed into the deployed copy as curtin does"
            _install_kernel(ch, image, pkg, progress)
            found = rootfs.kernels(root)
            times["kernel"] = time.monotonic() - start
            if not found:
                raise BootTestError(f"installing {pkg} in the deployed copy of {image} gave no "
                                    "/boot/vmlinuz-*", reason="no-kernel",
                                    hint="pass the kernel package of this distribution "
                                         "(kernel='linux-image-amd64', --kernel PKG)")
        late = tuple(_late(ch, command) for command in late_commands(os_release))
    version = found[-1]
    top = os.stat(root)
    compressed = rootfs.lstat(root, f"/boot/vmlinuz-{version}") is not None
    return Staged(root=root, os_name=os_release.get("PRETTY_NAME", "unknown"),
                  kernel_version=version,
                  kernel=f"/boot/vmlinu{'z' if compressed else 'x'}-{version}",
                  kernel_source=source, late_commands=late,
                  curtin_errors=_initramfs_tool_missing(root, found),
                  baked_machine_id=baked, tree_bytes=tree, times=times,
                  root_mode=stat.S_IMODE(top.st_mode), root_owner=(top.st_uid, top.st_gid))


def finish(staged: Staged) -> tuple[str | None, tuple[str, ...]]:
    """curtin's last curthook: the initramfs, built now that the fstab names the root.

    Returns the in-root path of the initrd to boot with (None: the kernel boots alone),
    and curtin's error when update-initramfs fails (curtin fails that deployment).
    """
    start = time.monotonic()
    root, versions = staged.root, rootfs.kernels(staged.root)
    errors: tuple[str, ...] = ()
    if rootfs.lstat(root, "/usr/sbin/update-initramfs") is not None:
        with Chroot(root, network="none") as ch:
            ch.temporary_file(FSTYPE_HINT, "FSTYPE=ext4\n")
            for version in versions:
                has = rootfs.lstat(root, f"/boot/initrd.img-{version}") is not None
                argv = ["update-initramfs", "-u" if has else "-c", "-k", version]
                try:
                    ch.run(argv, capture=True)
                except CommandError as e:
                    errors += (f"curtin would fail this deployment: `{' '.join(argv)}` fails "
                               f"in the target (exit {e.returncode}): {tail(e.stderr, 3)}",)
        staged.times["initramfs"] = time.monotonic() - start
    version = staged.kernel_version
    # initramfs-tools (and Debian's dracut) name it initrd.img-V; Fedora's dracut initramfs-V.img
    initrd = next((p for p in (f"/boot/initrd.img-{version}", f"/boot/initramfs-{version}.img")
                   if rootfs.lstat(root, p) is not None), None)
    return initrd, errors


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
    run.run(dying_with_us(["sfdisk", "--quiet", disk.path]),
            input=f"label: dos\nstart={PARTITION_START}, type=83\n")
    table = json.loads(run.run(dying_with_us(["sfdisk", "--json", disk.path]),
                               capture=True).stdout)
    part = table["partitiontable"]["partitions"][0]
    blocks = int(part["size"]) * SECTOR // 4096
    run.run(dying_with_us(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-d",
                           os.fspath(staged.root), "-E",
                           f"offset={int(part['start']) * SECTOR}", "-U", uuid, "-L", "rootfs",
                           disk.path, str(blocks)]))
    # mke2fs -d makes / 0755 root:root whatever the tree's top is; curtin's tar -p gives
    # the deployed / the image's own mode and owner: so does the disk.
    uid, gid = staged.root_owner
    run.run(dying_with_us(["debugfs", "-w", "-f", "-", _device(disk)]),
            input=f"sif / mode 0{stat.S_IFDIR | staged.root_mode:o}\nsif / uid {uid}\n"
                  f"sif / gid {gid}\n", capture=True)


def disk_size(staged: Staged) -> int:
    """A sparse disk with room to spare for the first boot (it costs only what is written)."""
    mib = 1 << 20
    return max(4096 * mib, -(-(2 * staged.tree_bytes + 1024 * mib) // mib) * mib)


def _device(disk: Scratch) -> str:
    """The disk's root filesystem, as e2fsprogs tools name it (no loop device)."""
    return f"{disk.path}?offset={PARTITION_START * SECTOR}"


def read_disk(disk: Scratch, path: str) -> bytes | None:
    """The content of ``path`` on the disk's root filesystem (read with debugfs, no mount)."""
    done = run.run(dying_with_us(["debugfs", "-R", f"cat {path}", _device(disk)]),
                   capture=True, check=False, text=False)
    err = done.stderr.decode("utf-8", "replace") if done.stderr else ""
    if done.returncode != 0 or "File not found" in err:
        return None
    return bytes(done.stdout)


def list_disk(disk: Scratch, directory: str) -> list[str]:
    """The names in ``directory`` on the disk's root filesystem."""
    done = run.run(dying_with_us(["debugfs", "-R", f"ls -p {directory}", _device(disk)]),
                   capture=True, check=False)
    names = []
    for line in (done.stdout or "").splitlines():
        fields = line.strip().split("/")
        if len(fields) >= 7 and fields[5] not in (".", ".."):
            names.append(fields[5])
    return sorted(names)


# --- inside the staging tree ---------------------------------------------------------------


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
    """curtin's error (``curthooks.update_initramfs``) for kernels with neither
    update-initramfs nor dracut in the target (it leaves a dracut target alone)."""
    tools = ("/usr/sbin/update-initramfs", "/usr/bin/dracut", "/usr/sbin/dracut")
    if any(_which(root, tool) for tool in tools):
        return ()
    return (f"curtin would fail this deployment: the image has the kernel {versions[-1]} but "
            "neither update-initramfs nor dracut (curthooks.update_initramfs: \"cannot update "
            "the initramfs\"); install initramfs-tools",)


def _which(root: Path, path: str) -> bool:
    st = rootfs.lstat(root, path)
    return st is not None and (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode))


#: MAAS's base OS of a custom image (``base_image``; Ubuntu when none is given) by the image's
#: os-release ``ID``: the key of ``DEPS_PER_OS`` in canonical/maas ``src/maasserver/preseed.py``.
_BASE_OS = {"centos": "centos", "rocky": "centos", "almalinux": "centos", "rhel": "rhel",
            "ol": "ol", "sles": "suse", "opensuse-leap": "suse", "opensuse-tumbleweed": "suse"}
#: The programs MAAS checks for each base OS (``DEPS_PER_OS``).
_DEPS = {"ubuntu": ("cloud-init --version", "netplan info")}


def late_commands(os_release: dict[str, str]) -> tuple[str, ...]:
    """The late_commands MAAS adds for a custom image, as the shell lines it runs
    (``get_custom_image_dependency_validation``): ``cloud-init --version`` always, and
    ``netplan info`` when the base OS is Ubuntu (the default)."""
    base = _BASE_OS.get(os_release.get("ID", ""), "ubuntu")
    return tuple(f'{cmd} || (echo "{cmd.split()[0]} {MAAS_WORDS}" && exit 1)'
                 for cmd in _DEPS.get(base, ("cloud-init --version",)))


def _late(ch: Chroot, command: str) -> LateCommand:
    # MAAS runs them as `curtin in-target -- bash -c '...'`: without bash they fail too.
    done = ch.run(["bash", "-c", command], check=False, capture=True)
    output = "\n".join(p.strip() for p in (done.stdout, done.stderr) if p and p.strip())
    return LateCommand(tuple(command.split(" || ", 1)[0].split()), done.returncode, output)


def _check_rootfs(image: Path, root: Path) -> None:
    missing = [p for p in ("/etc", "/usr", "/bin/sh") if rootfs.lstat(root, p) is None]
    if missing:
        raise ArchiveError(f"{image} does not hold a root filesystem (no {', '.join(missing)})",
                           path=image, hint="give a TGZ packed from a whole rootfs "
                                            "(maas-chroot build or pack)")


def _baked_machine_id(root: Path) -> str | None:
    data = rootfs.read_regular_head(root, "/etc/machine-id", 4096)
    value = data.decode("utf-8", "replace").strip() if data is not None else ""
    return value if value and value != "uninitialized" else None


def _tree_bytes(root: Path) -> int:
    """The apparent size of the regular files of the tree."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return sum(node.st.st_size for node in walk(fd, str(root))
                   if node.kind == ENTRY and stat.S_ISREG(node.st.st_mode))
    finally:
        os.close(fd)
