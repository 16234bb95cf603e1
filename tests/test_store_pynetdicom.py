"""pynetdicom as a second, independent peer (its storescu/echoscu apps and its API)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import (
    CORPUS,
    CORPUS_IDS,
    HOST,
    SCP_AE,
    Event,
    EventLog,
    Prepared,
    Sample,
    assert_file_stored,
    assert_incoming_empty,
    by_sop_uid,
    dataset_bytes,
    stored_files,
)
from dicom_storescp import StoreScp
from pynetdicom import AE, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification

PYNETDICOM_AE = "PYNETDICOM"


def pynetdicom_wire_bytes(prepared: Prepared) -> bytes:
    """What pynetdicom's storescu app sends: it reads the file with pydicom and
    encodes the data set again in the negotiated transfer syntax (pydicom drops
    group length elements, and deflated data is inflated and deflated anew), so
    compute the bytes with the same encoder."""
    ds = pydicom.dcmread(prepared.path)
    ts = ds.file_meta.TransferSyntaxUID
    data = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
    assert data is not None
    return data


@pytest.fixture(scope="module")
def app_run(
    corpus: dict[str, Prepared], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, EventLog, subprocess.CompletedProcess[str]]]:
    """Send the whole corpus folder once with `python -m pynetdicom storescu -r -cx`."""
    out_dir = tmp_path_factory.mktemp("pynetdicom-out")
    log = EventLog()
    scp = StoreScp(port=0, out_dir=str(out_dir), host=HOST)
    for name in ("OnFileStored", "OnError"):
        scp.add_event_listener(name, log.listener(name))
    scp.start()
    try:
        folder = next(iter(corpus.values())).path.parent
        proc = subprocess.run(
            [
                sys.executable, "-m", "pynetdicom", "storescu",
                HOST, str(scp.port), str(folder),
                "-r", "--required-contexts",
                "-aet", PYNETDICOM_AE, "-aec", SCP_AE, "-v",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        log.wait_for("OnFileStored", len(corpus), timeout=30)
    finally:
        scp.stop()
    yield out_dir, log, proc


@pytest.mark.parametrize("sample", CORPUS, ids=CORPUS_IDS)
def test_app_stores_in_own_transfer_syntax(
    sample: Sample,
    corpus: dict[str, Prepared],
    app_run: tuple[Path, EventLog, subprocess.CompletedProcess[str]],
) -> None:
    out_dir, log, proc = app_run
    prepared = corpus[sample.name]
    events = by_sop_uid(log.get("OnFileStored"))
    assert prepared.sop_instance_uid in events, (
        f"{sample.name} not stored; storescu said:\n{proc.stderr[-3000:]}"
    )
    assert_file_stored(
        events[prepared.sop_instance_uid],
        prepared,
        out_dir,
        pynetdicom_wire_bytes(prepared),
        calling_ae=PYNETDICOM_AE,
    )


def test_app_run_complete(
    corpus: dict[str, Prepared],
    app_run: tuple[Path, EventLog, subprocess.CompletedProcess[str]],
) -> None:
    out_dir, log, proc = app_run
    assert len(log.get("OnFileStored")) == len(corpus)
    assert log.get("OnError") == []
    assert stored_files(out_dir) == {p.expected_path(out_dir).resolve() for p in corpus.values()}
    assert_incoming_empty(out_dir)
    # pynetdicom logs each response status; every one must be Success.
    assert proc.stderr.count("Received Store Response (Status: 0x0000 - Success)") == len(corpus), (
        proc.stderr[-3000:]
    )


def test_echoscu_app(scp: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pynetdicom", "echoscu", HOST, str(scp.port), "-aec", SCP_AE],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("msg_id", [4242, 1, 65535])
def test_c_echo_answers_with_request_message_id(scp: Any, msg_id: int) -> None:
    received: list[tuple[str, Any, Any]] = []

    def on_recv(event: Any) -> None:
        cs = event.message.command_set
        received.append(
            (type(event.message).__name__, cs.get("MessageIDBeingRespondedTo"), cs.get("Status"))
        )

    ae = AE(ae_title="ECHO-API")
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        HOST, scp.port, ae_title=SCP_AE, evt_handlers=[(evt.EVT_DIMSE_RECV, on_recv)]
    )
    assert assoc.is_established
    try:
        status = assoc.send_c_echo(msg_id=msg_id)
        assert status is not None and "Status" in status, "no C-ECHO response"
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert received == [("C_ECHO_RSP", msg_id, 0x0000)]


def test_api_store_sequence_with_message_ids(corpus: dict[str, Prepared], scp: Any) -> None:
    """pynetdicom API: several C-STOREs with explicit message IDs on one association."""
    from pynetdicom import _config

    items = [corpus[n] for n in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm")]
    ae = AE(ae_title=PYNETDICOM_AE)
    for p in items:
        ae.add_requested_context(p.sop_class_uid, p.transfer_syntax_uid)
    old = _config.STORE_SEND_CHUNKED_DATASET
    # Send the data set bytes straight from the file, no re-encoding.
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(HOST, scp.port, ae_title=SCP_AE)
        assert assoc.is_established
        try:
            for i, p in enumerate(items):
                status = assoc.send_c_store(p.path, msg_id=100 + i)
                assert status is not None and status.Status == 0x0000, status
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
    events = by_sop_uid(scp.log.wait_for("OnFileStored", len(items)))
    for p in items:
        ev: Event = events[p.sop_instance_uid]
        assert_file_stored(ev, p, scp.out_dir, dataset_bytes(p.path), calling_ae=PYNETDICOM_AE)
