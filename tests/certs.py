"""Test certificates made with the openssl CLI: a CA, a server certificate for
127.0.0.1/localhost and client certificates (EC P-256, valid for a day)."""

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=str(cwd), check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "test-ca") -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    _run(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "1", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return Pair(directory / f"{name}.crt", directory / f"{name}.key")


def issue(ca: Pair, directory: Path, name: str, san: str = "") -> Pair:
    _run(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    _run(
        "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    return Pair(directory / f"{name}.crt", directory / f"{name}.key")


@dataclass(frozen=True)
class Certs:
    ca: Pair
    server: Pair
    client: Pair
    other_ca: Pair
    stranger: Pair  # a client certificate from another CA


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    d = tmp_path_factory.mktemp("certs")
    ca = make_ca(d)
    other = make_ca(d, "other-ca")
    return Certs(
        ca=ca,
        server=issue(ca, d, "server", "DNS:localhost,IP:127.0.0.1"),
        client=issue(ca, d, "cam-1"),
        other_ca=other,
        stranger=issue(other, d, "stranger"),
    )
