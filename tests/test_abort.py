"""Peers that vanish in the middle of an object leave nothing behind."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pydicom
import pytest
from conftest import (
    HOST,
    SCP_AE,
    Prepared,
    RunningScp,
    assert_file_stored,
    assert_incoming_empty,
    dcmtk_wire_bytes,
    incoming_files,
    stored_files,
    storescu,
    wait_until,
)
from pydicom.uid import generate_uid
from pynetdicom.dsutils import encode
from rawdul import EXPLICIT_LE, RawAssociation, c_store_rq

RAW_AE = "RAW-PEER"
OBJECT_SIZE = 2 * 1024 * 1024


class BigObject:
    def __init__(self, base: Path) -> None:
        ds = pydicom.dcmread(base)
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.Rows = 1024
        ds.Columns = 1024
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = os.urandom(OBJECT_SIZE)
        data = encode(ds, False, True)
        assert data is not None and len(data) > OBJECT_SIZE
        self.data: bytes = data
        self.sop_class = str(ds.SOPClassUID)
        self.sop_instance = str(ds.SOPInstanceUID)
        self.study = str(ds.StudyInstanceUID)
        self.series = str(ds.SeriesInstanceUID)
        self.prepared = Prepared(
            name="big",
            flag="-xe",
            path=base,
            transfer_syntax_uid=EXPLICIT_LE,
            sop_class_uid=self.sop_class,
            sop_instance_uid=self.sop_instance,
            study_instance_uid=self.study,
            series_instance_uid=self.series,
        )


@pytest.fixture
def big(base_dataset_file: Path) -> BigObject:
    return BigObject(base_dataset_file)


def _start_store(port: int, obj: BigObject) -> RawAssociation:
    assoc = RawAssociation(HOST, port)
    assoc.associate(RAW_AE, SCP_AE, [(1, obj.sop_class, [EXPLICIT_LE])])
    assert 1 in assoc.accepted, "presentation context for the object was not accepted"
    assert assoc.accepted[1].transfer_syntax == EXPLICIT_LE
    assoc.send_command(1, c_store_rq(7, obj.sop_class, obj.sop_instance))
    return assoc


def test_raw_client_complete_store(scp: RunningScp, big: BigObject) -> None:
    """The hand-made client is correct: a complete 2 MB object is stored byte for byte."""
    assoc = _start_store(scp.port, big)
    sent = assoc.send_dataset(1, big.data)
    assert sent == len(big.data)
    rsp = assoc.read_response()
    assert struct.unpack("<H", rsp[0x00000100])[0] == 0x8001, "not a C-STORE-RSP"
    assert struct.unpack("<H", rsp[0x00000120])[0] == 7, "wrong MessageIDBeingRespondedTo"
    assert struct.unpack("<H", rsp[0x00000900])[0] == 0x0000, "status not Success"
    assert assoc.release() == 0x06, "no A-RELEASE-RP"
    (event,) = scp.log.wait_for("OnFileStored", 1)
    assert_file_stored(event, big.prepared, scp.out_dir, big.data, calling_ae=RAW_AE)
    assert_incoming_empty(scp.out_dir)


def _assert_nothing_left(scp: RunningScp, obj: BigObject) -> None:
    errors = scp.log.wait_for("OnError", 1, timeout=15)
    err = errors[0]
    assert isinstance(err["message"], str) and err["message"], err
    assert err["sop_instance_uid"] in (None, obj.sop_instance), err
    assert err["calling_ae_title"] == RAW_AE, err
    assert isinstance(err["peer"], str) and err["peer"].startswith(f"{HOST}:"), err
    assert err["status"] is None or isinstance(err["status"], int), err
    assert_incoming_empty(scp.out_dir, timeout=5)
    study_dir = scp.out_dir / obj.study
    assert not study_dir.exists() or not any(p.is_file() for p in study_dir.rglob("*")), (
        f"partial object visible under {study_dir}: {list(study_dir.rglob('*'))}"
    )
    assert stored_files(scp.out_dir) == set()
    assert scp.log.get("OnFileStored") == []


def _then_normal_send_works(scp: RunningScp, corpus: dict[str, Prepared]) -> None:
    prepared = corpus["CT_small.dcm"]
    storescu(scp.port, [prepared.path], "-R", "-xe")
    (event,) = scp.log.wait_for("OnFileStored", 1)
    assert_file_stored(
        event, prepared, scp.out_dir, dcmtk_wire_bytes(prepared), calling_ae="DCMTK-SCU"
    )


@pytest.mark.parametrize("how", ["a-abort", "tcp-close"])
def test_peer_gone_mid_object(
    scp: RunningScp, big: BigObject, corpus: dict[str, Prepared], how: str
) -> None:
    assoc = _start_store(scp.port, big)
    sent = assoc.send_dataset(1, big.data, stop_after=len(big.data) // 2)
    assert 0 < sent < len(big.data)
    if how == "a-abort":
        assoc.abort()
    else:
        assoc.close()
    _assert_nothing_left(scp, big)
    _then_normal_send_works(scp, corpus)


def test_peer_gone_after_command_before_data(
    scp: RunningScp, big: BigObject, corpus: dict[str, Prepared]
) -> None:
    assoc = _start_store(scp.port, big)
    assoc.abort()
    # Nothing of the object arrived: the SCP may or may not report it, but it
    # must leave nothing behind and keep serving.
    assert_incoming_empty(scp.out_dir)
    assert stored_files(scp.out_dir) == set()
    _then_normal_send_works(scp, corpus)


def test_object_streams_to_incoming_then_abort_cleans_up(
    scp: RunningScp, big: BigObject, corpus: dict[str, Prepared]
) -> None:
    """While an object arrives its bytes go to a temporary file under .incoming
    (not buffered whole in memory); the abort removes that file."""
    assoc = _start_store(scp.port, big)
    try:
        sent = assoc.send_dataset(1, big.data, stop_after=len(big.data) - 100_000)
        assert sent > OBJECT_SIZE // 2
        grew = wait_until(
            lambda: (
                sum(p.stat().st_size for p in incoming_files(scp.out_dir) if p.exists())
                >= OBJECT_SIZE // 2
            ),
            timeout=10,
        )
        assert grew, (
            f"after {sent} bytes, .incoming holds {incoming_files(scp.out_dir)}: "
            "data is not streamed to a temporary file as it arrives"
        )
        assert stored_files(scp.out_dir) == set(), "partial object visible at a final path"
    finally:
        assoc.abort()
    _assert_nothing_left(scp, big)
    _then_normal_send_works(scp, corpus)


def test_other_associations_unaffected_by_abort(
    scp: RunningScp, big: BigObject, corpus: dict[str, Prepared]
) -> None:
    """An abort on one association while another one is open and sending."""
    other = BigObject(corpus["CT_small.dcm"].path)
    slow = _start_store(scp.port, other)
    first = slow.send_dataset(1, other.data, stop_after=len(other.data) // 2)
    doomed = _start_store(scp.port, big)
    doomed.send_dataset(1, big.data, stop_after=len(big.data) // 3)
    doomed.abort()
    scp.log.wait_for("OnError", 1, timeout=15)
    # the first association finishes its object normally
    assert 0 < first < len(other.data)
    slow.send_dataset(1, other.data[first:])
    rsp = slow.read_response()
    assert struct.unpack("<H", rsp[0x00000900])[0] == 0x0000
    assert slow.release() == 0x06
    (event,) = scp.log.wait_for("OnFileStored", 1)
    assert_file_stored(event, other.prepared, scp.out_dir, other.data, calling_ae=RAW_AE)
    assert not (scp.out_dir / big.study).exists() or not any(
        p.is_file() for p in (scp.out_dir / big.study).rglob("*")
    )
    assert_incoming_empty(scp.out_dir)
