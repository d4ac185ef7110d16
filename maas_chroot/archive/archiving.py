"""Archive I/O: extract() and pack() rootfs images with full fidelity, safely and fast.

``extract`` reads tar (gzip, xz, bzip2, zstd or none; detected by content)
through libarchive, with the decompressor in a separate process so that
decompression overlaps file writes (as GNU tar does), and squashfs through
``unsquashfs``. ``pack`` writes a deterministic pax tar through libarchive and
compresses it with threaded zlib-ng gzip (or xz/bzip2), atomically.
Both keep every kind of metadata curtin's ``tar --xattrs --xattrs-include=*
-Sxpf --numeric-owner`` restores: numeric owners, all mode bits, xattrs
(``security.capability``), POSIX ACLs, hard links, symlinks, devices, FIFOs,
sparse files, mtimes, non-UTF-8 names and long paths.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import logging
import os
import re
import secrets
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import formats, rootfs, run
from .. import progress as _progress
from ..errors import ArchiveError, CommandError, UnsafeArchiveError
from ..rootfs import lock
from . import compress, tarread, tarwrite

log = logging.getLogger(__name__)

__all__ = ["PackResult", "atomic_output", "detect_format", "extract", "output_format", "pack",
           "write_atomically"]

_F_SETPIPE_SZ = 1031


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack` wrote: the file, its size in bytes and its sha256 (hex), and the
    architecture of the image (Debian's name, from its ``/bin/sh``; None if unknown)."""

    path: Path
    size: int
    sha256: str
    arch: str | None = None

    def __repr__(self) -> str:
        return (f"PackResult(path={os.fspath(self.path)!r}, size={self.size} "
                f"({self.size / 1e6:.1f} MB), sha256={self.sha256!r}, arch={self.arch!r})")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The archive format of ``path`` from its magic bytes (see :func:`formats.detect`).

    One of "tar.gz", "tar.xz", "tar.bz2", "tar.zst", "tar", "squashfs".
    """
    try:
        found = formats.detect(formats.read_head(path))
    except OSError as e:
        raise ArchiveError(f"cannot read {os.fspath(path)}: {e.strerror}", path=path,
                           hint="check the path and its permissions") from e
    if found is None:
        raise ArchiveError(f"{os.fspath(path)} is not a tar archive (plain, gzip, xz, bzip2 "
                           "or zstd) nor a squashfs image", path=path,
                           hint="pass a rootfs tarball or squashfs image (e.g. from mc.fetch())")
    return found


# --- extract ----------------------------------------------------------------------------


def extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *,
            progress: bool | None = None) -> Path:
    """Unpack ``archive`` (tar.* or squashfs, detected by content) into ``dest``.

    ``dest`` must be missing or an empty directory. On any failure what was
    written is removed and the error raised (``UnsafeArchiveError`` for a
    member that would land outside ``dest``). Returns ``dest`` as a Path.
    """
    src = os.fspath(archive)
    fmt = detect_format(src)
    out = Path(os.path.abspath(os.fspath(dest)))
    created = _prepare_dest(out)
    real = os.path.realpath(out)
    try:
        if fmt == "squashfs":
            _unsquashfs(src, real, progress)
        else:
            _extract_tar(src, fmt, real, progress)
    except BaseException:
        _discard(real, created)
        raise
    return out


def _prepare_dest(dest: Path) -> bool:
    """Check ``dest`` is empty (True if we created it)."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        dest.mkdir(parents=True, mode=0o755)
        return True
    if not stat.S_ISDIR(st.st_mode):
        raise ArchiveError(f"cannot extract into {dest}: it is not a directory", path=dest,
                           hint="pass a new or empty directory")
    with os.scandir(dest) as it:
        if next(it, None) is not None:
            raise ArchiveError(f"cannot extract into {dest}: it is not empty", path=dest,
                               hint="pass a new or empty directory (or remove this one)")
    return False


def _discard(dest: str, created: bool) -> None:
    try:
        if created:
            rootfs.remove_tree(dest)
        else:
            fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                rootfs.clear_dir_at(fd, dest)
            finally:
                os.close(fd)
    except Exception:
        log.exception("could not clean up %s after a failed extract", dest)


@functools.lru_cache(maxsize=1)
def _xz_memlimit() -> tuple[str, ...]:
    """Cap xz's multi-threaded decompression memory (it uses fewer threads instead).

    Without it, ``xz -T0`` buffers whole blocks per thread: ~140 MB RSS for an
    ``xz -6`` image on 2 cores, far more for ``-9`` blocks on a big machine.
    """
    if shutil.which("xz") is None:
        return ()
    text = run.run(["xz", "--long-help"], capture=True, check=False).stdout or ""
    return ("--memlimit-mt-decompress=96MiB",) if "memlimit-mt-decompress" in text else ()


def _decompressor(fmt: str) -> list[str] | None:
    """argv of the external decompressor for ``fmt`` (stdin to stdout), if installed."""
    kind = formats.compression(fmt)
    for argv in kind.decompressors if kind is not None else ():
        if shutil.which(argv[0]):
            return [*argv, *(_xz_memlimit() if argv[0] == "xz" else ())]
    return None


def _extract_tar(src: str, fmt: str, dest: str, show: bool | None) -> None:
    total = os.stat(src).st_size
    with open(src, "rb") as f, \
            _progress.bar(show, total=total, desc=f"extract {os.path.basename(src)}") as bar:
        count, done = 0, 0

        def tick() -> None:
            nonlocal count, done
            count += 1
            if count % 64 == 0:
                pos = os.lseek(f.fileno(), 0, os.SEEK_CUR)
                bar.update(pos - done)
                done = pos

        argv = _decompressor(fmt) if fmt != "tar" else None
        if argv is None:
            tarread.untar(f.fileno(), dest, archive=src, filters=fmt != "tar", tick=tick)
        else:
            with run.spawn(argv, stdin=f) as proc:
                _untar_from(proc, src, dest, tick)
        bar.update(total - done)


def _untar_from(proc: subprocess.Popen[bytes], src: str, dest: str,
                tick: Callable[[], object]) -> None:
    """Extract what the decompressor ``proc`` writes; report its own failure first."""
    assert proc.stdout is not None and proc.stderr is not None
    pipe = proc.stdout.fileno()
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe, _F_SETPIPE_SZ, 1 << 20)
    try:
        tarread.untar(pipe, dest, archive=src, filters=False, tick=tick)
        while os.read(pipe, 1 << 16):  # let the decompressor finish (and check its CRC)
            pass
    except UnsafeArchiveError:
        raise
    except ArchiveError as e:
        # A corrupt stream makes the decompressor stop, and libarchive then sees a
        # truncated tar: name the real cause. (If the decompressor is still running,
        # the error is libarchive's own; spawn() stops the process.)
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            raise e from None
        if code != 0:
            err = proc.stderr.read().decode(errors="replace").strip()
            raise ArchiveError(f"cannot decompress {src}: {argv0(proc)} failed: {err}",
                               path=src, hint="the file is corrupt or truncated; fetch it "
                                              "again") from e
        raise
    err = proc.stderr.read().decode(errors="replace")
    try:
        run.check_exit(proc, stderr=err)
    except CommandError as e:
        raise ArchiveError(f"cannot decompress {src}: {e}", path=src,
                           hint="the file is corrupt or truncated; fetch it again") from e


def argv0(proc: subprocess.Popen[bytes]) -> str:
    return str(proc.args[0])  # type: ignore[index]


#: unsquashfs's progress bar line: "[====|   ] 600/1200  50%" (its stdout, split on \r).
_SQFS_PROGRESS = re.compile(rb"(\d+)/(\d+)\s+\d+%")


def _unsquashfs(src: str, dest: str, show: bool | None) -> None:
    # As root, unsquashfs restores owners, modes, xattrs (ACLs are xattrs), hard
    # links, devices and sparse files; -strict-errors makes any lost bit fatal.
    # Smaller queues keep its memory flat (the default is 256 MB each). Its own
    # progress bar (blocks done / total) drives ours, scaled to the image's size.
    total = os.stat(src).st_size
    argv = ["unsquashfs", "-strict-errors", "-force", "-da", "32", "-fr", "32",
            "-dest", dest, src]
    said: collections.deque[str] = collections.deque(maxlen=40)
    with _progress.bar(show, total=total, desc=f"extract {os.path.basename(src)}") as bar, \
            run.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        done, pending = 0, b""
        while chunk := os.read(proc.stdout.fileno(), 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in lines:
                m = _SQFS_PROGRESS.search(line)
                if m:
                    at = total * int(m[1]) // max(int(m[2]), 1)
                    bar.update(at - done)
                    done = at
                elif line.strip():
                    said.append(line.decode("utf-8", "replace"))
        code = proc.wait()
        if code == 0:
            bar.update(total - done)
    if code != 0:
        log.debug("unsquashfs said:\n%s", "\n".join(said))
        raise ArchiveError(f"unsquashfs could not extract {src} into {dest} "
                           f"(exit code {code}): " + "\n".join(list(said)[-10:]),
                           path=src, hint="check the image (unsquashfs -stat) and the "
                                          "free space at the destination")


# --- pack -------------------------------------------------------------------------------


def pack(root: str | os.PathLike[str], out: str | os.PathLike[str], *,
         compression: str = "gzip", level: int = 6, threads: int | None = None,
         reproducible: bool = True, progress: bool | None = None) -> PackResult:
    """Write the tree ``root`` to ``out`` as a pax tar (gzip by default, or xz, bzip2).

    Atomic (temp file beside ``out``, renamed at the end; a killed pack leaves
    at most a ``.<name>.*.part`` file, never a partial ``out``), and, with
    ``reproducible``, deterministic: sorted entries, no atime/ctime, mtimes
    clamped to ``SOURCE_DATE_EPOCH`` when set, gzip header mtime 0, and the
    same bytes whatever ``threads`` or the machine's core count (gzip then
    always runs a fixed number of compressor threads; xz always uses its
    multi-threaded encoder, whose blocks do not depend on the thread count).
    ``threads`` (default: the usable cores) sizes xz/lbzip2, and gzip when
    ``reproducible`` is false.
    """
    found = formats.compression(compression)
    where = os.fspath(out)
    if found is None or not found.curtin:
        hint = (f"curtin cannot read {found.name}; use gzip (the default), xz or bzip2"
                if found is not None else "use gzip (the default), xz or bzip2")
        raise ArchiveError(f"cannot pack {where} with compression {compression!r}",
                           path=where, hint=hint)
    kind = found.name
    if level not in found.levels:
        lv = found.levels
        raise ArchiveError(f"level {level} is not valid for {kind}", path=where,
                           hint=f"use a level from {lv.start} to {lv.stop - 1}")
    src = _check_root(root, where)
    dest = Path(os.path.abspath(where))
    clamp = _source_date_epoch(where) if reproducible else None
    nthreads = threads or len(os.sched_getaffinity(0))
    try:
        # The session lock keeps a Chroot from swapping resolv.conf/policy-rc.d in mid-walk.
        with lock.exclusive(src, "pack"), atomic_output(dest) as raw, \
                _progress.bar(progress, total=None, desc=f"pack {dest.name}") as bar:
            stream = compress.open_stream(kind, raw, level=level, threads=nthreads,
                                           where=where, reproducible=reproducible)
            try:
                tarwrite.write_tree(src, stream.write, where=where, clamp=clamp,
                                  sort=reproducible, on_bytes=bar.update)
                stream.close()
            except BaseException:
                compress.abort(stream)
                raise
    except OSError as e:
        raise ArchiveError(f"cannot pack {src} into {dest}: {e}", path=dest,
                           hint="check the free space and permissions at the destination, "
                                "and that nothing in the tree changes while it is packed")\
            from e
    log.info("packed %s into %s (%d bytes)", src, dest, raw.size)
    arch = rootfs.image_arch(src)
    return PackResult(dest, raw.size, raw.sha256, arch.name if arch is not None else None)


def output_format(out: str | os.PathLike[str]) -> tuple[str, str]:
    """(pack compression, MAAS filetype) for an output file name: ``x.tgz`` -> gzip, tgz.

    Only what curtin deploys: gzip, xz and bzip2 (:mod:`maas_chroot.formats`).
    """
    name = os.path.basename(os.fspath(out))
    found = formats.tar_output(name)
    if found is None or found.maas_tar is None:
        why = f"curtin cannot unpack {found.name}; " if found is not None else ""
        raise ArchiveError(f"cannot tell the output format from the name {name!r}",
                           path=out, hint=f"{why}name it .tgz (what MAAS and curtin expect), "
                                          ".tar.xz or .tar.bz2")
    return found.name, found.maas_tar


def _check_root(root: str | os.PathLike[str], out: str) -> str:
    src = os.path.realpath(os.fspath(root))
    if not os.path.isdir(src):
        raise ArchiveError(f"cannot pack {os.fspath(root)}: not a directory", path=root,
                           hint="pass the rootfs directory")
    parent = os.path.realpath(os.path.dirname(os.path.abspath(out)))
    if parent == src or parent.startswith(src.rstrip("/") + "/"):
        raise ArchiveError(f"cannot write {out} inside the tree being packed ({src})",
                           path=out, hint="write the archive outside the rootfs")
    return src


def _source_date_epoch(out: str) -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ArchiveError(f"cannot pack {out}: SOURCE_DATE_EPOCH={value!r} is not an integer",
                           path=out,
                           hint="set SOURCE_DATE_EPOCH to seconds since 1970, or unset it")\
            from None


def write_atomically(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` as :func:`pack` writes an image (a manifest, a record)."""
    with atomic_output(dest) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_output(dest: Path) -> Iterator[compress.HashingFile]:
    """A HashingFile on a fresh temp file beside ``dest``, renamed onto it on success
    (synced first, then the directory): a crash leaves the old ``dest`` or the new one."""
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ArchiveError(f"cannot create {tmp}: {e.strerror}", path=dest,
                           hint="check the directory exists and is writable") from e
    try:
        try:
            yield compress.HashingFile(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
