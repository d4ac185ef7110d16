"""The subprocess chokepoint: argv only, clean env, stdin /dev/null, typed failures."""

from __future__ import annotations

import logging
import os

import pytest

from maas_chroot import run
from maas_chroot.errors import ArgumentError, CommandError


def test_clean_env_is_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "leak")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    out = run.run(["env"], capture=True).stdout
    names = {line.split("=", 1)[0] for line in out.splitlines()}
    assert "SECRET_TOKEN" not in names
    assert "HTTPS_PROXY=http://127.0.0.1:3128" in out
    assert "LANG=C.UTF-8" in out
    assert f"PATH={run.DEFAULT_PATH}" in out


def test_stdin_is_dev_null() -> None:
    out = run.run(["readlink", "/proc/self/fd/0"], capture=True).stdout.strip()
    assert out == "/dev/null"


def test_input_is_fed() -> None:
    assert run.run(["cat"], capture=True, input="hello").stdout == "hello"


def test_failure_carries_argv_code_and_stderr() -> None:
    with pytest.raises(CommandError) as info:
        run.run(["sh", "-c", "echo boom >&2; exit 3"])
    err = info.value
    assert err.argv == ["sh", "-c", "echo boom >&2; exit 3"]
    assert err.returncode == 3
    assert err.stderr is not None and "boom" in err.stderr
    assert "boom" in str(err) and "exit code 3" in str(err)


def test_check_false_returns_code() -> None:
    assert run.run(["false"], check=False).returncode == 1


def test_missing_command_is_a_command_error() -> None:
    with pytest.raises(CommandError) as info:
        run.run(["definitely-not-a-command-xyz"])
    assert info.value.returncode == 127
    assert "not found" in str(info.value)


def test_string_argv_is_refused() -> None:
    with pytest.raises(ArgumentError, match="not a string") as err:
        run.run("echo hi")  # type: ignore[arg-type]
    assert isinstance(err.value, TypeError)  # what Python itself raises for this
    with pytest.raises(ArgumentError, match="empty"):
        run.run([])
    with pytest.raises(TypeError):
        run.run("echo hi")  # type: ignore[arg-type]


def test_debug_log_shows_command(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="maas_chroot.run"):
        run.run(["true", "a b"])
    assert "+ true 'a b'" in caplog.text


def test_spawn_reaps_and_kills_on_error() -> None:
    with pytest.raises(RuntimeError), run.spawn(["sleep", "30"]) as proc:
        raise RuntimeError("body failed")
    assert proc.returncode == -15  # terminated by SIGTERM, and reaped
    assert not os.path.exists(f"/proc/{proc.pid}")


def test_spawn_check_exit() -> None:
    with run.spawn(["sh", "-c", "exit 4"]) as proc:
        _, err = proc.communicate()
    with pytest.raises(CommandError) as info:
        run.check_exit(proc, err)
    assert info.value.returncode == 4
