"""Protocol violations inside an established association: each one ends (or is
answered on) that association only, and a normal C-STORE works right after."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from conftest import (
    HOST,
    SCP_AE,
    Prepared,
    RunningScp,
    assert_incoming_empty,
    dcmtk_wire_bytes,
    stored_files,
    storescu,
    wait_until,
)
from rawdul import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    RawAssociation,
    _element,
    _pdu,
    c_echo_rq,
    c_store_rq,
    p_data,
)

VERIFICATION = "1.2.840.10008.1.1"
RAW_AE = "HOSTILE"


def _then_store_works(run: RunningScp, corpus: dict[str, Prepared]) -> None:
    p = corpus["CT_small.dcm"]
    storescu(run.port, [p.path], "-R", "-xe")
    (ev,) = run.log.wait_for("OnFileStored", 1)
    assert Path(ev["file"]).read_bytes() == dcmtk_wire_bytes(p)
    assert stored_files(run.out_dir) == {p.expected_path(run.out_dir).resolve()}
    assert_incoming_empty(run.out_dir)


def _expect_abort_or_close(assoc: RawAssociation) -> None:
    """The server answers a violation with A-ABORT and closes, or just closes."""
    try:
        pdu_type, _ = assoc.read_pdu()
    except (ConnectionError, OSError):
        return
    assert pdu_type == 0x07, f"expected A-ABORT, got PDU type {pdu_type:#x}"


def _associated(run: RunningScp, sop_class: str) -> RawAssociation:
    assoc = RawAssociation(HOST, run.port)
    assoc.associate(
        RAW_AE, SCP_AE, [(1, sop_class, [EXPLICIT_LE]), (3, VERIFICATION, [IMPLICIT_LE])]
    )
    assert set(assoc.accepted) == {1, 3}
    return assoc


@pytest.mark.parametrize(
    "violation",
    [
        pytest.param(_pdu(0x09, b"\x00" * 8), id="unknown-pdu-type"),
        pytest.param(_pdu(0x01, b"\x00" * 80), id="second-associate-rq"),
        pytest.param(
            p_data(5, b"\x00" * 10, command=True, last=True), id="pdv-for-unproposed-context"
        ),
        pytest.param(p_data(1, b"\x00" * 10, command=False, last=True), id="data-without-command"),
        pytest.param(p_data(1, b"\xff" * 10, command=True, last=True), id="garbage-command-set"),
        pytest.param(
            struct.pack(">BBI", 0x04, 0, 12) + struct.pack(">IBB", 200, 1, 3) + b"ab",
            id="pdv-length-beyond-pdu",
        ),
    ],
)
def test_protocol_violation_aborts_only_that_association(
    scp: RunningScp, corpus: dict[str, Prepared], base_dataset_file: Path, violation: bytes
) -> None:
    ds = pydicom.dcmread(base_dataset_file)
    assoc = _associated(scp, str(ds.SOPClassUID))
    try:
        assoc.sock.sendall(violation)
        _expect_abort_or_close(assoc)
    finally:
        assoc.close()
    assert scp.log.get("OnFileStored") == []
    _then_store_works(scp, corpus)


def test_command_after_partial_dataset_aborts_and_cleans_up(
    scp: RunningScp, corpus: dict[str, Prepared], base_dataset_file: Path
) -> None:
    ds = pydicom.dcmread(base_dataset_file)
    data = base_dataset_file.read_bytes()[132:]
    assoc = _associated(scp, str(ds.SOPClassUID))
    try:
        assoc.send_command(1, c_store_rq(1, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        assoc.send_dataset(1, data, stop_after=len(data) // 2)
        # a new command while the data set is still expected
        assoc.send_command(1, c_store_rq(2, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        _expect_abort_or_close(assoc)
    finally:
        assoc.close()
    (err,) = scp.log.wait_for("OnError", 1)
    assert err["calling_ae_title"] == RAW_AE
    _then_store_works(scp, corpus)


def _c_find_rq(msg_id: int, with_dataset: bool) -> bytes:
    body = _element(0x0000, 0x0002, b"1.2.840.10008.5.1.4.1.2.2.1\x00")
    body += _element(0x0000, 0x0100, struct.pack("<H", 0x0020))
    body += _element(0x0000, 0x0110, struct.pack("<H", msg_id))
    body += _element(0x0000, 0x0700, struct.pack("<H", 0))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0000 if with_dataset else 0x0101))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


@pytest.mark.parametrize("with_dataset", [True, False])
def test_other_dimse_commands_get_unrecognized_operation(
    scp_factory, corpus: dict[str, Prepared], with_dataset: bool
) -> None:
    # "All" accepts the Q/R abstract syntax, so the C-FIND reaches the DIMSE layer.
    run = scp_factory(abstract_syntax_mode="All")
    find = "1.2.840.10008.5.1.4.1.2.2.1"
    assoc = RawAssociation(HOST, run.port)
    try:
        assoc.associate(RAW_AE, SCP_AE, [(1, find, [EXPLICIT_LE])])
        assoc.send_command(1, _c_find_rq(77, with_dataset))
        if with_dataset:
            assoc.send_dataset(1, _element(0x0010, 0x0010, b"DOE^J*"))
        rsp = assoc.read_response()
        assert struct.unpack("<H", rsp[0x00000100])[0] == 0x8020  # C-FIND-RSP
        assert struct.unpack("<H", rsp[0x00000120])[0] == 77
        assert struct.unpack("<H", rsp[0x00000900])[0] == 0x0211
        assert assoc.release() == 0x06
    finally:
        assoc.close()
    assert run.log.get("OnFileStored") == []
    _then_store_works(run, corpus)


def test_a_peer_that_stops_reading_responses_is_disconnected(
    scp_factory: Callable[..., RunningScp],
    corpus: dict[str, Prepared],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Requests keep coming, responses are never read: once the server cannot
    hand over a response for the DIMSE timeout, it drops the association
    (instead of holding it, and its slot, for ever)."""
    run = scp_factory(dimse_timeout=1)
    assoc = RawAssociation(HOST, run.port, timeout=20, rcvbuf=4096)
    assoc.associate(RAW_AE, SCP_AE, [(3, VERIFICATION, [IMPLICIT_LE])])
    echo = p_data(3, c_echo_rq(1), command=True, last=True)
    started = time.monotonic()
    sent = 0
    with pytest.raises(ConnectionError):
        # the server stops reading once its responses back up, then the
        # connection is reset under us (a send timeout would not do)
        while time.monotonic() - started < 30:
            assoc.sock.sendall(echo * 64)
            sent += 64
    assert sent > 64, "the server never answered a request"
    # what the server sent before it gave up is readable, then the end
    with pytest.raises(ConnectionError):
        while True:
            assoc.read_pdu()
    assoc.close()
    assert wait_until(lambda: run.scp.stats()["associations_open"] == 0)

    def logged() -> bool:
        return any("within the DIMSE timeout" in r.getMessage() for r in caplog.records)

    assert wait_until(logged), [r.getMessage() for r in caplog.records][-5:]
    _then_store_works(run, corpus)
