"""Which certificates the MAAS client trusts, and what a TLS failure tells the user.

MAAS serves https (port 5443 by default) once ``maas config-tls enable KEY CERT
[--cacert CA]`` ran (``src/maasserver/management/commands/config_tls.py``), usually with a
certificate of a private CA. The maas CLI trusts what ``maas login --cacerts FILE``
stored in the profile: ``cmd_login`` (``src/maascli/cli.py``) keeps the PEM *text*
under ``cacerts``, and each later command writes it to ``~/.maascli.certs/<profile>.pem``
(``materialize_certificate``, ``src/maascli/utils.py``) for httplib2's ``ca_certs``.

Here ``cacerts=PATH`` is used as it is, and a profile's PEM text goes to a private
temporary file that the client owns and removes on ``close()``. Either way only those
CAs are trusted, as with the CLI. Without either, requests' default CA bundle is used
(``REQUESTS_CA_BUNDLE`` still applies). Verification is off only when the caller says
``verify_tls=False``, and that is logged.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import requests

from ..errors import MaasApiError

_FIX = ("give the CA certificate that signed MAAS's certificate (the file given to `maas "
        "config-tls enable --cacert`): MaasClient(..., cacerts='maas-ca.pem'), --cacerts "
        "FILE, or a profile made by `maas login --cacerts FILE`")


@dataclass(frozen=True)
class Trust:
    """What requests' ``verify=`` gets, and where it came from (for messages)."""

    verify: bool | str
    origin: str


def from_file(path: str | os.PathLike[str], *, url: str) -> Trust:
    """Trust the PEM certificates in ``path`` (checked now, not at the first request)."""
    where = os.fspath(path)
    try:
        ssl.create_default_context(cafile=where)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise MaasApiError(f"cannot use {where} as CA certificates for {url}: {e}", url=url,
                           hint="it must be a readable PEM file (-----BEGIN CERTIFICATE-----); "
                                + _FIX) from e
    return Trust(verify=str(Path(where).absolute()), origin=f"cacerts {where}")


def from_text(pem: str, *, url: str, origin: str,
              workdir: tempfile.TemporaryDirectory[str]) -> Trust:
    """Trust the PEM text of a profile's ``cacerts``, written into ``workdir``."""
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise MaasApiError(f"the cacerts of {origin} are not PEM certificates ({e})", url=url,
                           hint="log in again: maas login NAME URL KEY --cacerts FILE") from e
    path = Path(workdir.name) / "cacerts.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(pem)
    return Trust(verify=str(path), origin=f"the cacerts of {origin}")


def failure(e: requests.exceptions.SSLError, *, method: str, url: str,
            trust: Trust) -> MaasApiError:
    """A clear error for a failed TLS handshake (never a reason to retry without TLS)."""
    text = str(e)
    found = re.search(r"certificate verify failed: ([^(\]'\"]+)", text)
    trusted = "requests' default CA bundle" if trust.verify is True else trust.origin
    if found:
        reason = found.group(1).strip().rstrip(",")
        if "mismatch" in reason:
            hint = (f"the certificate is not issued for the host in {url}: use the host name "
                    "(or address) the certificate names")
        else:
            hint = _FIX
        return MaasApiError(f"{method} {url}: MAAS's TLS certificate is not trusted "
                            f"({reason}; trusting {trusted})", url=url, hint=hint)
    return MaasApiError(f"{method} {url}: TLS failed: {text}", url=url,
                        hint="check that the URL's port speaks https (MAAS: 5443) and "
                             "that this machine's clock is right")
