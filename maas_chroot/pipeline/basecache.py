"""The warm base cache: a verified source archive, extracted once, shared by every build.

A build from a source it has seen before does not extract it again: its rootfs is a
copy-on-write overlay (:mod:`maas_chroot.chroot.overlay`) whose read-only lower layer is
the tree extracted here the first time. Under ``<cache_dir>/bases`` (root-only, 0700: the
trees hold setuid programs and device nodes)::

    <key>/        the extracted tree; never written after it is made
    <key>.json    what it is: the archive, its sha256, when it was made and last used
    <key>.lock    flock: shared while a build uses the tree, exclusive to make or evict it

``<key>`` is the archive's sha256 and the maas_chroot version that extracted it (a new
version extracts afresh). A tree is made beside its final name and renamed into place, so
a killed extract leaves no half tree under a key. Trees unused for :data:`KEEP_DAYS` days
are removed, never one a build holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from .. import rootfs
from ..archive import archiving as archive
from ..archive.archiving import write_atomically
from ..errors import SourceError
from ..steps import Step, Steps
from ..version import __version__

log = logging.getLogger(__name__)

DIR = "bases"
KEEP_DAYS = 7.0
_PART = ".part-"


def key_of(sha256: str) -> str:
    return f"{sha256[:32]}-v{__version__}"


@contextlib.contextmanager
def using(archive_path: Path, sha256: str, cache_dir: Path, steps: Steps, *,
          progress: bool | None) -> Iterator[Path]:
    """The extracted tree of ``archive_path`` (whose sha256 is ``sha256``), made now (the
    ``extract`` step) unless the cache has it; held (shared) until the block ends."""
    top = _top(cache_dir)
    key = key_of(sha256)
    tree, meta = top / key, top / f"{key}.json"
    with _lock(top / f"{key}.lock", fcntl.LOCK_EX):
        if not (tree.is_dir() and meta.is_file()):
            with steps(Step.EXTRACT):
                _make(archive_path, sha256, tree, meta, progress=progress)
        else:
            log.info("using the extracted base %s (from %s): no extract", tree, archive_path.name)
        _touch(meta)
    # shared from here (a maker or an evictor needs it exclusively; a tree used just now is
    # never evicted, so the moment between the two locks is harmless)
    with _lock(top / f"{key}.lock", fcntl.LOCK_SH):
        if not tree.is_dir():
            raise SourceError(f"the extracted base {tree} went away while it was being used",
                              hint="build again (another process cleared the cache)")
        yield tree
    evict(cache_dir)


def evict(cache_dir: Path, *, days: float = KEEP_DAYS) -> list[Path]:
    """Remove the trees no build used for ``days`` days, and half-made ones; return them."""
    top = Path(cache_dir) / DIR
    if not top.is_dir():
        return []
    gone = []
    now = time.time()
    for lock_file in sorted(top.glob("*.lock")):
        key = lock_file.name.removesuffix(".lock")
        meta = top / f"{key}.json"
        with contextlib.suppress(BlockingIOError), \
                _lock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB):
            parts = sorted(top.glob(f"{_PART}{key}-*"))
            used = _last_used(meta)
            old = used is None or now - used > days * 86400
            for path in [*parts, *([top / key] if old else [])]:
                if path.exists():
                    rootfs.remove_tree(path)
                    gone.append(path)
            if old:
                meta.unlink(missing_ok=True)
                lock_file.unlink(missing_ok=True)
    if gone:
        log.info("base cache: removed %s", ", ".join(p.name for p in gone))
    return gone


def _top(cache_dir: Path) -> Path:
    top = Path(cache_dir) / DIR
    top.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(top)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise SourceError(f"the base cache {top} is open to other users (mode "
                          f"{st.st_mode & 0o777:o}, uid {st.st_uid})",
                          hint=f"chmod 700 {top} (its trees hold setuid programs), or remove it")
    return top


def _make(archive_path: Path, sha256: str, tree: Path, meta: Path, *,
          progress: bool | None) -> None:
    part = tree.with_name(f"{_PART}{tree.name}-{secrets.token_hex(4)}")
    try:
        archive.extract(archive_path, part, progress=progress)
        os.rename(part, tree)
    except BaseException:
        rootfs.remove_tree(part)
        raise
    info = {"archive": os.fspath(archive_path), "sha256": sha256, "made": time.time(),
            "maas_chroot": __version__}
    write_atomically(meta, json.dumps(info, indent=1).encode() + b"\n")


def _touch(meta: Path) -> None:
    now = time.time()
    os.utime(meta, (now, now))


def _last_used(meta: Path) -> float | None:
    try:
        return meta.stat().st_mtime
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _lock(path: Path, how: int) -> Iterator[None]:
    """flock ``path``; an evictor may have removed the file we waited on: lock the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, how)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)
