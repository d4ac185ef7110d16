"""Regression tests for review findings in the chroot session, its journal and its lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import maas_chroot as mc
from maas_chroot import _journal

pytestmark = pytest.mark.root


# --- H1: the lock directory is root-only and never followed through a planted path ----------


def test_lock_dir_is_created_root_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lockdir = tmp_path / "locks"
    monkeypatch.setattr(_journal, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with _journal.locked(str(root)):
        st = os.lstat(lockdir)
        assert st.st_uid == 0 and (st.st_mode & 0o777) == 0o700
        assert len(os.listdir(lockdir)) == 1


def test_planted_symlink_lock_dir_is_refused(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "attacker"
    target.mkdir()
    lockdir = tmp_path / "locks"
    lockdir.symlink_to(target)
    monkeypatch.setattr(_journal, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory") as e,
          _journal.locked(str(root))):
        pass
    assert str(lockdir) in str(e.value) and "remove" in str(e.value)
    assert os.listdir(target) == []


@pytest.mark.parametrize(("uid", "mode"), [(65534, 0o755), (0, 0o777), (0, 0o775)])
def test_planted_user_lock_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          uid: int, mode: int) -> None:
    lockdir = tmp_path / "locks"
    lockdir.mkdir()
    os.chown(lockdir, uid, uid)
    os.chmod(lockdir, mode)
    monkeypatch.setattr(_journal, "LOCK_DIRS", (str(lockdir),))
    root = tmp_path / "root"
    root.mkdir()
    with (pytest.raises(mc.ChrootError, match="unsafe session lock directory"),
          _journal.locked(str(root))):
        pass
    assert os.listdir(lockdir) == []
