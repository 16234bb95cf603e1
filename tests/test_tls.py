"""DICOM TLS with dcmtk's storescu as the peer: server certificates, required
client certificates, and refusals of untrusted or missing ones."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

import pytest
from conftest import (
    DCMTK_ENV,
    HOST,
    SCP_AE,
    STORESCU,
    Prepared,
    RunningScp,
    dcmtk_wire_bytes,
    stored_files,
)
from dicom_storescp import StoreScp

OPENSSL = "openssl"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _run(
        OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str, usage: str) -> None:
    ext = d / f"{name}.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
    )
    _run(
        OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d,
    )  # fmt: skip
    _run(
        OPENSSL, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", str(ext), cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _leaf(d, "server", "ca", "serverAuth")
    _leaf(d, "client", "ca", "clientAuth")
    _leaf(d, "intruder", "rogue-ca", "clientAuth")
    return d


def _send(port: int, files: list[Path], *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, "-aet", "TLS-SCU", "-aec", SCP_AE, *tls, "-R", "-xe", HOST, str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_tls_store_without_client_certificates(
    scp_factory: Callable[..., RunningScp], pki: Path, corpus: dict[str, Prepared]
) -> None:
    run = scp_factory(tls_cert=pki / "server.pem", tls_key=pki / "server.key")
    ct = corpus["CT_small.dcm"]
    # anonymous client that verifies the server against the CA
    proc = _send(run.port, [ct.path], "+tla", "+cf", str(pki / "ca.pem"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (ev,) = run.log.wait_for("OnFileStored", 1)
    assert Path(ev["file"]).read_bytes() == dcmtk_wire_bytes(ct)
    # a client that does not trust our CA refuses us
    proc = _send(run.port, [ct.path], "+tla", "+cf", str(pki / "rogue-ca.pem"))
    assert proc.returncode != 0
    # plain DICOM on the TLS port is refused; the server keeps serving
    proc = _send(run.port, [ct.path])
    assert proc.returncode != 0
    rejected = run.log.wait_for("OnAssociationRejected", 1)
    assert "TLS handshake failed" in rejected[-1]["reason"]
    proc = _send(run.port, [corpus["MR_small.dcm"].path], "+tla", "+cf", str(pki / "ca.pem"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run.log.wait_for("OnFileStored", 2)


def test_tls_requiring_client_certificates(
    scp_factory: Callable[..., RunningScp], pki: Path, corpus: dict[str, Prepared]
) -> None:
    run = scp_factory(
        tls_cert=pki / "server.pem", tls_key=pki / "server.key", tls_ca=pki / "ca.pem"
    )
    ct, mr = corpus["CT_small.dcm"], corpus["MR_small.dcm"]
    ca = ("+cf", str(pki / "ca.pem"))
    # no client certificate: refused
    proc = _send(run.port, [mr.path], "+tla", *ca)
    assert proc.returncode != 0
    # a certificate from an untrusted CA: refused
    intruder = ("+tls", str(pki / "intruder.key"), str(pki / "intruder.pem"))
    proc = _send(run.port, [mr.path], *intruder, *ca)
    assert proc.returncode != 0
    rejected = run.log.wait_for("OnAssociationRejected", 2)
    assert all("TLS handshake failed" in r["reason"] for r in rejected)
    assert stored_files(run.out_dir) == set()
    # a trusted client certificate: stored
    client = ("+tls", str(pki / "client.key"), str(pki / "client.pem"))
    proc = _send(run.port, [ct.path], *client, *ca)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (ev,) = run.log.wait_for("OnFileStored", 1)
    assert ev["calling_ae_title"] == "TLS-SCU"
    assert stored_files(run.out_dir) == {ct.expected_path(run.out_dir).resolve()}


def test_tls_option_errors(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ValueError, match="tls_key"):
        StoreScp(0, out_dir=tmp_path, tls_cert=pki / "server.pem")
    with pytest.raises(ValueError, match="tls_cert"):
        StoreScp(0, out_dir=tmp_path, tls_cert=tmp_path / "missing.pem", tls_key=pki / "server.key")
    with pytest.raises(ValueError, match="tls_ca"):
        StoreScp(0, out_dir=tmp_path, tls_ca=pki / "ca.pem")
    # a file that is not a certificate: refused at start()
    scp = StoreScp(0, out_dir=tmp_path, tls_cert=pki / "server.key", tls_key=pki / "server.key")
    with pytest.raises(ValueError, match="tls_cert"):
        scp.start()
