"""Objects the SCP must refuse, and hostile input it must survive (SPEC sections 4, 5)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pydicom
import pytest
from conftest import (
    HOST,
    SCP_AE,
    Prepared,
    RunningScp,
    assert_incoming_empty,
    dcmtk_wire_bytes,
    echoscu,
    stored_files,
    storescu,
)
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode
from rawdul import EXPLICIT_LE, RawAssociation, c_store_rq

RAW_AE = "RAW-PEER"


def _dataset(base: Path, **uids: str) -> tuple[str, bytes]:
    ds = pydicom.dcmread(base)
    ds.StudyInstanceUID = uids.get("study", generate_uid())
    ds.SeriesInstanceUID = uids.get("series", generate_uid())
    ds.SOPInstanceUID = uids.get("sop", generate_uid())
    data = encode(ds, False, True)
    assert data is not None
    return str(ds.SOPClassUID), data


def _store(port: int, sop_class: str, command_sop: str, data: bytes) -> int:
    assoc = RawAssociation(HOST, port)
    try:
        assoc.associate(RAW_AE, SCP_AE, [(1, sop_class, [EXPLICIT_LE])])
        assert 1 in assoc.accepted
        assoc.send_command(1, c_store_rq(11, sop_class, command_sop))
        assoc.send_dataset(1, data)
        rsp = assoc.read_response()
        status = struct.unpack("<H", rsp[0x00000900])[0]
        assert assoc.release() == 0x06, "association not released normally after a refusal"
        return int(status)
    finally:
        assoc.close()


BAD_UIDS = {
    "sop-traversal": {"sop": "../../../../tmp/evil"},
    "study-traversal": {"study": "1.2.3/../../../x"},
    "series-absolute": {"series": "/etc/passwd"},
    "sop-too-long": {"sop": "1." + "2" * 70},
    "study-letters": {"study": "1.2.abc"},
}


@pytest.mark.parametrize("uids", list(BAD_UIDS.values()), ids=list(BAD_UIDS))
def test_bad_uids_refused_and_nothing_written(
    scp: RunningScp, base_dataset_file: Path, tmp_path: Path, uids: dict[str, str]
) -> None:
    sop_class, data = _dataset(base_dataset_file, **uids)
    sop = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data), force=True).SOPInstanceUID
    status = _store(scp.port, sop_class, str(sop), data)
    assert status != 0x0000 and status & 0xF000 in (0xA000, 0xC000), f"status {status:#06x}"
    (err,) = scp.log.wait_for("OnError", 1)
    assert err["status"] == status
    assert err["calling_ae_title"] == RAW_AE
    assert stored_files(scp.out_dir) == set()
    assert scp.log.get("OnFileStored") == []
    assert not Path("/tmp/evil.dcm").exists()
    assert not [p for p in tmp_path.parent.rglob("*evil*") if p.is_file()]
    assert_incoming_empty(scp.out_dir)


def test_dataset_sop_instance_must_match_command(scp: RunningScp, base_dataset_file: Path) -> None:
    sop_class, data = _dataset(base_dataset_file)
    status = _store(scp.port, sop_class, generate_uid(), data)
    assert status != 0x0000 and status & 0xF000 in (0xA000, 0xC000), f"status {status:#06x}"
    scp.log.wait_for("OnError", 1)
    assert stored_files(scp.out_dir) == set()
    assert_incoming_empty(scp.out_dir)


def test_good_store_after_refusal_same_association(
    scp: RunningScp, base_dataset_file: Path
) -> None:
    sop_class, bad = _dataset(base_dataset_file, sop="1.2.x")
    good_uid = generate_uid()
    _, good = _dataset(base_dataset_file, sop=good_uid)
    assoc = RawAssociation(HOST, scp.port)
    try:
        assoc.associate(RAW_AE, SCP_AE, [(1, sop_class, [EXPLICIT_LE])])
        assoc.send_command(1, c_store_rq(1, sop_class, "1.2.x"))
        assoc.send_dataset(1, bad)
        assert struct.unpack("<H", assoc.read_response()[0x00000900])[0] != 0
        assoc.send_command(1, c_store_rq(2, sop_class, good_uid))
        assoc.send_dataset(1, good)
        rsp = assoc.read_response()
        assert struct.unpack("<H", rsp[0x00000120])[0] == 2
        assert struct.unpack("<H", rsp[0x00000900])[0] == 0
        assert assoc.release() == 0x06
    finally:
        assoc.close()
    (ev,) = scp.log.wait_for("OnFileStored", 1)
    assert ev["sop_instance_uid"] == good_uid
    assert Path(ev["file"]).read_bytes() == good


HOSTILE = {
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "pdu-claims-4gib": struct.pack(">BBI", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 64,
    "p-data-before-association": struct.pack(">BBI", 0x04, 0, 8)
    + b"\x00\x00\x00\x04\x01\x03\x00\x00",
    "truncated-associate-rq": struct.pack(">BBI", 0x01, 0, 200) + b"\x00\x01\x00\x00",
    "random-garbage": bytes(range(256)) * 64,
}


@pytest.mark.parametrize("payload", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_does_not_break_server(
    scp: RunningScp, corpus: dict[str, Prepared], payload: bytes
) -> None:
    with socket.create_connection((HOST, scp.port), timeout=5) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(15)
            while sock.recv(65536):
                pass
        except OSError:
            pass  # a reset is a fine answer
    # still serving, and nothing written
    assert echoscu(scp.port).returncode == 0
    p = corpus["CT_small.dcm"]
    storescu(scp.port, [p.path], "-R", "-xe")
    (ev,) = scp.log.wait_for("OnFileStored", 1)
    assert Path(ev["file"]).read_bytes() == dcmtk_wire_bytes(p)
    assert stored_files(scp.out_dir) == {p.expected_path(scp.out_dir).resolve()}
    assert_incoming_empty(scp.out_dir)
