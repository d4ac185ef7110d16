"""Helpers shared by the tests (import them from here, never from conftest).

A real Debian minbase rootfs is built with mmdebstrap from the mirror the
machine's apt already uses (read from /etc/apt, never named here) and cached
under the user's cache dir, so it is built once per machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from filelock import FileLock
from oauthlib.oauth1 import SIGNATURE_PLAINTEXT
from requests_oauthlib import OAuth1

from maas_chroot.sources import hostapt

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "maas-chroot-tests"
IS_ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parent.parent
#: What a MAAS deployment needs in a Debian image (kernel, init, cloud-init, netplan, sshd,
#: and a resolver manager so the deployed machine's DNS works): the boot test's image.
BOOT_PACKAGES = ("linux-image-amd64", "systemd-sysv", "udev", "cloud-init", "netplan.io",
                 "openssh-server", "systemd-resolved")


def qemu_processes(parent: int | None = None, *, using: int | None = None) -> list[int]:
    """PIDs of running QEMU system emulators: children of ``parent``, or started on the
    scratch files (``/proc/PID/fd/N``) of the process ``using``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (p / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if not comm.startswith("qemu-system"):
            continue
        if (parent is not None and ppid == parent) or \
                (using is not None and f"/proc/{using}/fd/" in cmdline):
            found.append(int(p.name))
    return found


def processes_naming(text: str) -> list[int]:
    """PIDs of the processes whose command line contains ``text``."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            try:
                if text in (p / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(p.name))
            except OSError:
                continue
    return found


def scratch_files(under: Path) -> list[str]:
    """Deleted files below ``under`` that some process still holds open."""
    held = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = [os.readlink(fd) for fd in fd_dir.iterdir()]
        except OSError:
            continue
        held += [t for t in links if t.startswith(str(under)) and t.endswith(" (deleted)")]
    return held


def build_minbase(dest: Path, *, include: tuple[str, ...] = (), suite: str | None = None,
                  arch: str | None = None) -> Path:
    """Build (once, under a lock) a minbase rootfs tarball with mmdebstrap; return its path.

    ``arch`` (a foreign one needs binfmt_misc set up, see conftest's ``arm64_emulation``)
    bootstraps another architecture from the same mirror.
    """
    src = hostapt.host_mirror(suite)
    suite = src.suites[0]
    key = hashlib.sha256(f"{src.uri} {suite} {sorted(include)}".encode()).hexdigest()[:12]
    out = dest / f"minbase-{suite}-{key}{'-' + arch if arch else ''}.tar"
    dest.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.exists():
            return out
        tmp = out.with_suffix(".tar.part")
        argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--quiet"]
        if include:
            argv.append("--include=" + ",".join(include))
        if arch:
            argv.append(f"--architectures={arch}")
        if src.signed_by:
            argv.append(f"--keyring={src.signed_by}")
        argv += [suite, str(tmp), src.uri]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        tmp.rename(out)
    return out


#: Marks of a test that runs an emulated arm64 image (it needs conftest's ``arm64_tar``).
FOREIGN = (pytest.mark.slow, pytest.mark.network)
#: ``@ON_BOTH_ARCHES`` runs a test taking ``shared_root`` or ``minbase_root`` on the
#: host's own minbase and on an arm64 one (emulated): every chroot feature works on both.
ON_BOTH_ARCHES = {name: pytest.mark.parametrize(
    name, ["native", pytest.param("arm64", marks=FOREIGN)], indirect=True)
    for name in ("shared_root", "minbase_root")}


def binfmt_state() -> tuple[bool, tuple[tuple[str, str], ...]]:
    """What binfmt_misc holds: mounted or not, and every entry with its text."""
    top = Path("/proc/sys/fs/binfmt_misc")
    mounted = (top / "register").exists()
    return mounted, tuple((p.name, p.read_text()) for p in sorted(top.iterdir())
                          if mounted and p.name not in ("register", "status"))


def run_cli(*args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m maas_chroot ARGS`` as a subprocess (no MAAS_* variables but ``env``)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "maas_chroot", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, stdin=subprocess.DEVNULL, timeout=600,
                          check=False)


def error_lines(stderr: str) -> list[str]:
    """The CLI's ``maas-chroot: error:`` lines."""
    return [line for line in stderr.splitlines() if line.startswith("maas-chroot: error:")]


def assert_one_clear_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 1, one error line and a hint, no traceback, every needle in stderr."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr
    assert "\nhint: " in "\n" + proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return errors[0]


def tar_members(tgz: Path) -> dict[str, tarfile.TarInfo]:
    """A packed image's members by name (without the leading ``./``)."""
    with tarfile.open(tgz) as tar:
        return {m.name.removeprefix("./"): m for m in tar.getmembers()}


def tar_read(tgz: Path, name: str, size: int = -1) -> bytes:
    """The content (or its first ``size`` bytes) of the member ``./NAME`` of a packed image."""
    with tarfile.open(tgz) as tar:
        f = tar.extractfile("./" + name)
        assert f is not None, name
        return f.read(size)


def gnu_extract(tarball: Path, dest: Path) -> None:
    """Extract with GNU tar and curtin's flags: the independent oracle."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                    "-Sxpf", str(tarball), "-C", str(dest)], check=True)


def tree_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything about a tree except times: type, mode, owner, content/target/device."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            meta: tuple[object, ...] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                        st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    meta += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                meta += (os.readlink(p),)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                meta += (st.st_rdev,)
            out[os.path.relpath(p, root)] = meta
    return out


def tree_xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    """Every extended attribute in a tree (security.capability, ACLs, user.*), by path."""
    out: dict[str, dict[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            p = os.path.join(dirpath, name)
            if name == "" and dirpath != str(root):
                continue
            found = {x: os.getxattr(p, x, follow_symlinks=False)
                     for x in os.listxattr(p, follow_symlinks=False)}
            if found:
                out[os.path.relpath(p, root)] = found
    return out


def curtin_extract(tarball: Path, target: Path) -> None:
    """What curtin runs at deploy time (curtin/commands/extract.py), flags verbatim."""
    target.mkdir()
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "-Sxpf", str(tarball),
                    "--numeric-owner", "-C", str(target)], check=True)


def deep_tree(top: Path, depth: int) -> Path:
    """``top/d/d/.../d`` ``depth`` levels deep, a file at each level, built with dir fds."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"%d\n" % i)
            os.mkdir("d", dir_fd=fd)
            sub = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return top


def rm_deep(top: Path) -> None:
    """Remove a deep test tree even when the code under test failed (pytest's own
    cleanup of old temp dirs recurses, and other sessions share them)."""
    if top.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(top)], check=True)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def paused_in_thread(monkeypatch: pytest.MonkeyPatch, target: Any, name: str,
                      work: Callable[[], object]) -> Iterator[list[object]]:
    """Run ``work()`` in a thread, held inside ``target[name]`` (or ``target.name``).

    The body runs while the thread is paused there (holding whatever lock it took);
    on exit the thread is released and joined, and the list holds what ``work`` returned.
    """
    started, release = threading.Event(), threading.Event()
    real = target[name] if isinstance(target, dict) else getattr(target, name)

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(60)
        return real(*args, **kwargs)

    if isinstance(target, dict):
        monkeypatch.setitem(target, name, slow)
    else:
        monkeypatch.setattr(target, name, slow)
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(work()))
    worker.start()
    try:
        assert started.wait(60)
        yield result
    finally:
        release.set()
        worker.join(60)


def maas_login(db: Path, name: str, url: str, api_key: str, *,
               cacerts: Path | None = None) -> dict[str, Any]:
    """Do what ``maas login NAME URL KEY [--cacerts FILE]`` does, and write its profile.

    As canonical/maas ``src/maascli/cli.py`` ``cmd_login`` (read, not copied): the URL gets
    ``/api/2.0/``; a signed ``GET users/?op=whoami`` must answer 200; an unsigned ``GET
    describe/`` must answer 200 with a Content-Type of exactly ``application/json``; the
    profile goes to sqlite table ``profiles(id, name UNIQUE, data)`` as the JSON of
    ``{credentials, description, name, url, cacerts}``, cacerts being the PEM *text*.
    """
    api = url.rstrip("/") + "/api/2.0/"
    verify: bool | str = str(cacerts) if cacerts else True
    ck, tk, secret = api_key.split(":")
    auth = OAuth1(ck, "", tk, secret, signature_method=SIGNATURE_PLAINTEXT)
    who = requests.get(api + "users/?op=whoami", auth=auth, verify=verify, timeout=30)
    assert who.status_code == 200, who.text
    described = requests.get(api + "describe/", verify=verify, timeout=30)
    assert described.status_code == 200
    assert described.headers["Content-Type"] == "application/json"
    data = {"credentials": [ck, tk, secret], "description": described.json(), "name": name,
            "url": api, "cacerts": cacerts.read_text() if cacerts else None}
    db.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("CREATE TABLE IF NOT EXISTS profiles (id INTEGER PRIMARY KEY,"
                     " name TEXT NOT NULL UNIQUE, data BLOB)")
        conn.execute("INSERT OR REPLACE INTO profiles (name, data) VALUES (?, ?)",
                     (name, json.dumps(data)))
    os.chmod(db, 0o600)
    return data


def write_tgz(path: Path, members: Iterable[tuple[str, bytes]], *,
              compresslevel: int = 9) -> Path:
    """A tar.gz of regular files: ``(name, content)`` in the order given."""
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_tgz(path: Path, *, payload: int, codename: str | None = "jammy") -> Path:
    """A real tar.gz with an Ubuntu etc/lsb-release and ``payload`` random bytes."""
    release = [("etc/lsb-release",
                f"DISTRIB_ID=Ubuntu\nDISTRIB_CODENAME={codename}\n".encode())] if codename else []
    return write_tgz(path, [*release, ("usr/lib/big", os.urandom(payload))], compresslevel=1)


#: The Python packages the real maas CLI imports (``src/maascli``, ``src/apiclient``): the
#: ``maascli`` extra of setup.cfg, which scripts/test installs when MAAS_SOURCE is set.
MAASCLI_MODULES = ("httplib2", "macaroonbakery", "OpenSSL", "yaml", "oauthlib")


def maascli_source(dest: Path) -> Path | str:
    """``src/maascli`` and ``src/apiclient`` of the canonical/maas checkout (a work tree or a
    git dir) named by ``$MAAS_SOURCE``, exported under ``dest``; or why they cannot be."""
    where = os.environ.get("MAAS_SOURCE")
    if not where:
        return ("the real maas CLI needs a canonical/maas checkout: "
                "MAAS_SOURCE=/path/to/maas scripts/test")
    missing = [m for m in MAASCLI_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"the maas CLI needs {', '.join(missing)}: pip install -e .[test,maascli]"
    top = Path(where)
    if (top / "src/maascli/__init__.py").is_file():
        return top / "src"
    git = top / ".git" if (top / ".git").exists() else top
    out = subprocess.run(["git", f"--git-dir={git}", "archive", "HEAD", "src/maascli",
                          "src/apiclient"], capture_output=True, stdin=subprocess.DEVNULL,
                         check=False)
    if out.returncode != 0:
        return f"MAAS_SOURCE={where} is not a canonical/maas checkout: {out.stderr.decode()}"
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


class RealMaasCli:
    """The real ``maas`` CLI (canonical/maas ``src/maascli``), run from source with its own
    ``$HOME``, so that its profiles live in ``home/.maascli.db``."""

    def __init__(self, src: Path, home: Path) -> None:
        self.src, self.home = src, home
        home.mkdir(parents=True, exist_ok=True)

    @property
    def db(self) -> Path:
        return self.home / ".maascli.db"

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "PYTHONPATH": str(self.src), "LANG": "C.UTF-8"}
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from maascli import main; "
             "main(['maas', *sys.argv[1:]])", *args],
            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
            check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"maas {' '.join(args)}: exit {proc.returncode}\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self(*args).stdout)

