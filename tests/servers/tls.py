"""A private CA and a server certificate for 127.0.0.1, made with openssl for a test.

As with ``maas config-tls enable KEY CERT --cacert CA`` on a region: a self-signed CA
signs the server's certificate; clients must be given the CA to trust it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TestCA:
    ca: Path        # the CA certificate (what `maas login --cacerts` is given)
    cert: Path      # the server's certificate, for 127.0.0.1 and localhost
    key: Path       # the server's key

    __test__ = False   # not a pytest test class


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(where: Path, *, name: str = "maas-test-ca") -> TestCA:
    """A CA and a server certificate signed by it, in ``where`` (EC keys: fast)."""
    where.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=where)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=where)
    (where / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=where)
    return TestCA(ca=where / "ca.pem", cert=where / "server.pem", key=where / "server.key")
