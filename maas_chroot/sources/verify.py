"""Verification primitives for fetch: gpgv on a detached signature, SHA256SUMS lookup, hashing."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CommandError, VerificationError
from ..run import run

log = logging.getLogger(__name__)

#: Where Ubuntu hosts keep the key that signs cloud-images' SHA256SUMS.
DEFAULT_KEYRING = "/usr/share/keyrings/ubuntu-cloudimage-keyring.gpg"

_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
_BAD_STATUS = ("BADSIG", "ERRSIG", "NO_PUBKEY", "EXPKEYSIG", "REVKEYSIG", "EXPSIG")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Signature:
    """A good signature: the signing key's fingerprint and user id."""

    fingerprint: str
    uid: str


def keyring_path(keyring: str | os.PathLike[str] | None, *, url: str) -> Path:
    """The keyring to check against; a clear error (before any download) if it is missing."""
    path = Path(os.fspath(keyring) if keyring is not None else DEFAULT_KEYRING)
    if not path.is_file():
        if keyring is None:
            hint = ("install it with `apt install ubuntu-cloudimage-keyring`, pass keyring=, "
                    "or choose verify=\"checksum\" (SHA256SUMS over the transport only)")
        else:
            hint = "give an existing keyring file, or choose verify=\"checksum\""
        raise VerificationError(f"cannot check the signature of {url}: keyring {path} is missing;"
                                " nothing was downloaded", url=url, hint=hint)
    return path.absolute()


def check_signature(data: Path, signature: Path, keyring: Path, *, url: str) -> Signature:
    """Check a detached signature with gpgv; return the signer or raise VerificationError."""
    with tempfile.TemporaryDirectory(prefix="maas-chroot-gpgv-") as home:
        argv = ["gpgv", "--homedir", home, "--status-fd", "1", "--keyring", os.fspath(keyring),
                os.fspath(signature), os.fspath(data)]
        try:
            proc = run(argv, check=False, capture=True)
        except CommandError as e:
            raise VerificationError(f"cannot check the signature of {url}: {e.message}", url=url,
                                    hint="install gpgv (`apt install gpgv`), or choose "
                                         "verify=\"checksum\"") from e
    status = [line.split()[1:] for line in (proc.stdout or "").splitlines()
              if line.startswith("[GNUPG:] ") and len(line.split()) > 1]
    bad = [words for words in status if words[0] in _BAD_STATUS]
    valid = [words for words in status if words[0] == "VALIDSIG" and len(words) > 1]
    good = [words for words in status if words[0] == "GOODSIG"]
    if proc.returncode != 0 or bad or not valid or not good:
        why = " ".join(bad[0]) if bad else f"gpgv exit code {proc.returncode}"
        detail = (proc.stderr or "").strip().splitlines()
        raise VerificationError(
            f"bad or untrusted signature on {url} ({why})"
            + (f": {detail[-1]}" if detail else ""),
            url=url, hint=f"the file was not signed by a key in {keyring}; "
                          "check the mirror, or pass the right keyring=")
    signer = Signature(fingerprint=valid[0][1], uid=" ".join(good[0][2:]))
    log.debug("good signature on %s by %s %s", url, signer.fingerprint, signer.uid)
    return signer


def sums_entry(sums: bytes, filename: str, *, url: str) -> str:
    """The sha256 listed for ``filename`` in a SHA256SUMS text: exactly one line, or an error."""
    found = []
    for raw in sums.decode("utf-8", "replace").splitlines():
        m = _SUMS_LINE.match(raw.rstrip("\r"))
        if m and m.group(2) == filename:
            found.append(m.group(1).lower())
    if not found:
        raise VerificationError(f"{url} has no entry for {filename}", url=url,
                                hint="the mirror may be mid-update or lack this image; "
                                     "retry later or choose another serial")
    if len(found) > 1:
        raise VerificationError(f"{url} lists {filename} {len(found)} times; refusing an "
                                "ambiguous checksum", url=url, hint="report it to the mirror")
    return found[0]


def file_sha256(path: Path, hasher: hashlib._Hash | None = None) -> str:
    """Hash a whole file (or feed it into ``hasher``) in constant memory."""
    h = hasher if hasher is not None else hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
