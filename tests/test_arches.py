"""Architectures without running anything: the ELF table, an image's arch read inside its
root, MAAS's architecture of an upload, and binfmt_misc handlers read from a fake
/proc/sys/fs/binfmt_misc (the host's kernel state is never changed here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from fixtures import write_tgz

import maas_chroot as mc
from maas_chroot import arches, binfmt, rootfs
from maas_chroot.maas import names

ARM64 = arches.BY_NAME["arm64"]
#: What Debian's qemu-user-static registers for arm64 (as the kernel shows it).
QEMU_AARCH64 = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""


# --- the table ------------------------------------------------------------------------------


def test_every_arch_is_recognised_from_its_own_elf_header() -> None:
    for arch in arches.ARCHES:
        assert arches.from_elf(arch.elf_header()) == arch, arch.name
        assert arches.is_program(arch.elf_header())
    assert arches.from_elf(Path(os.path.realpath("/bin/sh")).read_bytes()[:128]) == arches.host()


def test_armhf_and_armel_differ_by_the_float_abi_flag() -> None:
    hf, el = arches.BY_NAME["armhf"].elf_header(), arches.BY_NAME["armel"].elf_header()
    assert hf[:36] == el[:36] and hf != el  # same machine, class, endianness
    assert (arches.from_elf(hf), arches.from_elf(el)) == (arches.BY_NAME["armhf"],
                                                        arches.BY_NAME["armel"])


def test_what_is_not_an_elf_program() -> None:
    assert arches.from_elf(b"#!/bin/sh\necho hi\n".ljust(128)) is None
    assert arches.from_elf(ARM64.elf_header()[:40]) is None  # truncated
    module = bytearray(ARM64.elf_header())
    module[16] = 1  # ET_REL: a kernel module says the machine, but is not a program
    assert arches.from_elf(bytes(module)) == ARM64 and not arches.is_program(bytes(module))
    mips = bytearray(ARM64.elf_header())
    mips[18:20] = (8).to_bytes(2, "little")
    assert arches.from_elf(bytes(mips)) is None


def test_names_the_kernel_and_qemu_use_are_accepted() -> None:
    assert [arches.get(n).name for n in ("aarch64", "arm64", "x86_64", "ppc64le", "i686")] == [
        "arm64", "arm64", "amd64", "ppc64el", "i386"]
    with pytest.raises(mc.SourceError, match="unknown architecture 'sparc'") as exc:
        arches.get("sparc")
    assert "arm64" in (exc.value.hint or "")
    assert arches.host("aarch64") == ARM64 and arches.host("armv7l") == arches.BY_NAME["armhf"]
    assert arches.host("mips64") is None


def test_the_maas_architecture_follows_the_image() -> None:
    assert arches.maas_architecture(None, "arm64") == "arm64/generic"
    assert arches.maas_architecture(None, None) == "amd64/generic"
    assert arches.maas_architecture("arm64/hwe-22.04", "arm64") == "arm64/hwe-22.04"
    assert arches.maas_architecture("s390x/generic", None) == "s390x/generic"
    with pytest.raises(mc.ImageNameError, match="contradicts the image") as exc:
        arches.maas_architecture("amd64/generic", "arm64")
    assert "arm64/generic" in (exc.value.hint or "") and "force" in (exc.value.hint or "")
    assert arches.maas_architecture("amd64/generic", "arm64", force=True) == "amd64/generic"


# --- an image's architecture, read inside its root ------------------------------------------


def _image(top: Path, header: bytes, *, absolute: bool = False) -> Path:
    """A merged-/usr tree whose /bin/sh is a link (inside the image) to a fake dash."""
    (top / "usr/bin").mkdir(parents=True)
    (top / "etc").mkdir()
    (top / "bin").symlink_to("usr/bin")
    (top / "usr/bin/dash").write_bytes(header + b"\0" * 64)
    (top / "usr/bin/sh").symlink_to("/usr/bin/dash" if absolute else "dash")
    return top


def test_image_arch_resolves_bin_sh_inside_the_root(tmp_path: Path) -> None:
    # An absolute link /bin/sh -> /usr/bin/dash followed on the host would read the host's
    # own (amd64) dash; resolved inside the root, it reads the image's.
    root = _image(tmp_path / "root", ARM64.elf_header(), absolute=True)
    assert rootfs.image_arch(root) == ARM64
    assert rootfs.image_arch(_image(tmp_path / "s390x", arches.BY_NAME["s390x"].elf_header())
                             ) == arches.BY_NAME["s390x"]


def test_image_arch_falls_back_to_dpkg_and_else_says_none(tmp_path: Path) -> None:
    root = _image(tmp_path / "root", b"#!/bin/busybox sh\n")
    assert rootfs.image_arch(root) is None
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: libc6\nArchitecture: amd64\n\n"
                      "Package: dpkg\nStatus: install ok installed\nArchitecture: riscv64\n")
    assert rootfs.image_arch(root) == arches.BY_NAME["riscv64"]


def test_a_tgz_says_its_architecture_by_its_programs(tmp_path: Path) -> None:
    tgz = write_tgz(tmp_path / "img.tgz", [
        ("./etc/ld.so.cache", arches.BY_NAME["amd64"].elf_header()),
        ("./usr/lib/modules/x.ko", ARM64.elf_header()[:16] + b"\1"),
        ("./usr/bin/[", ARM64.elf_header() + b"\0" * 64)])
    assert names.sniff_arch(tgz, "tgz") == "arm64"
    assert names.sniff_arch(tgz, "ddraw") is None


def test_a_big_boot_dir_first_does_not_hide_the_architecture(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    # members come sorted: an initrd that does not compress comes before usr/bin
    tgz = write_tgz(tmp_path / "img.tgz", [("./boot/initrd.img-6.8", os.urandom(3 << 20)),
                                           ("./usr/bin/dash", ARM64.elf_header() + b"\0" * 64)],
                    compresslevel=1)
    assert names.sniff_arch(tgz, "tgz", required=True) == "arm64"
    monkeypatch.setattr(names, "_SNIFF_BUDGET", 1 << 20)  # as if /boot held 600 MB
    assert names.sniff_arch(tgz, "tgz") is None
    with pytest.raises(mc.ImageNameError, match="no program found in the first 1 MiB") as err:
        names.sniff_arch(tgz, "tgz", required=True)
    assert "architecture=" in (err.value.hint or "")


# --- binfmt_misc, from a fake /proc/sys/fs/binfmt_misc ---------------------------------------


@pytest.fixture
def fake_binfmt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory standing for an unmounted binfmt_misc (on an amd64 host)."""
    top = tmp_path / "binfmt_misc"
    top.mkdir()
    monkeypatch.setattr(binfmt, "BINFMT_DIR", str(top))
    monkeypatch.setattr(arches.os, "uname", lambda: os.uname_result(
        ("Linux", "h", "6.1", "#1", "x86_64")))
    return top


def _mount(top: Path, **entries: str) -> None:
    (top / "register").write_text("")
    (top / "status").write_text("enabled\n")
    for name, text in entries.items():
        (top / name.replace("_", "-")).write_text(text)


def test_unmounted_binfmt_misc_says_how_to_set_it_up(fake_binfmt: Path) -> None:
    st = binfmt.status("arm64")
    assert not st.ok and "not mounted" in (st.problem or "")
    assert st.hint is not None
    for step in ("mount -t binfmt_misc binfmt_misc", "update-binfmts --enable qemu-aarch64",
                 "maas-chroot binfmt --enable arm64"):
        assert step in st.hint, st.hint
    with pytest.raises(mc.EmulationError, match="arm64 binaries cannot run") as exc:
        binfmt.require("arm64", root="/srv/root")
    assert (exc.value.root, exc.value.arch) == ("/srv/root", "arm64")
    assert isinstance(exc.value, mc.ChrootError)


def test_an_enabled_handler_with_the_f_flag_runs_the_image(fake_binfmt: Path) -> None:
    _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64)
    st = binfmt.status("aarch64")
    assert st.ok and not st.native and st.handler == "qemu-aarch64"
    assert st.interpreter == "/usr/libexec/qemu-binfmt/aarch64-binfmt-P"
    assert "emulated by qemu-aarch64" in str(st)
    other = binfmt.status("s390x")  # its own handler is missing
    assert not other.ok and "no binfmt_misc handler for s390x" in (other.problem or "")
    assert "update-binfmts --enable qemu-s390x" in (other.hint or "")
    assert binfmt.status("i386").native and binfmt.status("amd64").native
    on_mips = binfmt.status("amd64", machine="mips64")  # a host not in the table
    assert on_mips.host == "mips64" and not on_mips.ok


def test_handlers_without_f_disabled_or_switched_off_are_refused(fake_binfmt: Path) -> None:
    _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64.replace("flags: PF", "flags: P"))
    st = binfmt.status("arm64")
    assert "without the F (fix-binary) flag" in (st.problem or "")
    assert "update-binfmts --disable qemu-aarch64" in (st.hint or "")
    _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64.replace("enabled", "disabled", 1))
    st = binfmt.status("arm64")
    assert "registered but disabled" in (st.problem or "")
    assert st.hint == f"echo 1 > {fake_binfmt}/qemu-aarch64"
    _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64)
    (fake_binfmt / "status").write_text("disabled\n")
    assert "binfmt_misc is disabled" in (binfmt.status("arm64").problem or "")


def test_32_bit_arm_on_arm64_is_native_only_where_the_cpu_has_aarch32(
        fake_binfmt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert binfmt.status("armhf", machine="aarch64").native is (binfmt._compat(
        arches.BY_NAME["armhf"], ARM64))
    monkeypatch.setattr(binfmt, "_compat", lambda a, h: False)
    assert not binfmt.status("armhf", machine="aarch64").ok
    assert binfmt.status("arm64", machine="aarch64").native


def test_enable_changes_nothing_when_it_runs_and_needs_root_otherwise(
        fake_binfmt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_commands(*a: Any, **k: Any) -> None:
        raise AssertionError(f"ran {a}")

    monkeypatch.setattr(binfmt.run, "run", no_commands)
    _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64)
    assert mc.enable_binfmt("arm64").handler == "qemu-aarch64"
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 1000)
    with pytest.raises(mc.PrivilegeError):
        mc.enable_binfmt("s390x")


def test_a_failed_enable_undoes_what_it_did(fake_binfmt: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "binfmts"
    db.mkdir()
    (db / "qemu-aarch64").write_text("package qemu-user-static\n")
    monkeypatch.setattr(binfmt, "BINFMTS_DB", str(db))
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 0)
    monkeypatch.setattr(binfmt.shutil, "which", lambda *a, **k: "/usr/sbin/update-binfmts")
    ran: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> None:
        ran.append(argv)
        if argv[0] == "mount":
            _mount(fake_binfmt)
        elif argv[0] == "umount":
            shutil.rmtree(fake_binfmt)
            fake_binfmt.mkdir()
        elif argv[:2] == ["update-binfmts", "--enable"]:  # registers it without the F flag
            _mount(fake_binfmt, qemu_aarch64=QEMU_AARCH64.replace("flags: PF", "flags: P"))
        elif argv[:2] == ["update-binfmts", "--disable"]:
            (fake_binfmt / "qemu-aarch64").unlink()

    monkeypatch.setattr(binfmt.run, "run", fake_run)
    with pytest.raises(mc.EmulationError, match="still cannot run") as exc:
        mc.enable_binfmt("arm64")
    assert "F (fix-binary)" in exc.value.message
    assert [a[:2] for a in ran] == [["mount", "-t"], ["update-binfmts", "--enable"],
                                    ["update-binfmts", "--disable"], ["umount", str(fake_binfmt)]]
    assert not binfmt.mounted()
    ran.clear()
    with binfmt.enabled("amd64") as st:  # native: nothing to do
        assert st.native
    assert ran == []


def test_enable_says_which_packages_are_missing(fake_binfmt: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binfmt, "BINFMTS_DB", str(tmp_path / "none"))
    monkeypatch.setattr(binfmt.os, "geteuid", lambda: 0)
    with pytest.raises(mc.EmulationError) as exc:
        mc.enable_binfmt("riscv64")
    assert exc.value.hint == "apt install qemu-user-static binfmt-support"
    assert "apt install qemu-user-static binfmt-support" in (binfmt.status("riscv64").hint or "")
