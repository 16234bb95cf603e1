"""Negotiation policy: catalogs, modes, transfer syntax choice, limits,
timeouts and AE title checks, against real peers (dcmtk, pynetdicom, raw
sockets)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from conftest import (
    DCMTK_ENV,
    ECHOSCU,
    HOST,
    SCP_AE,
    Prepared,
    RunningScp,
    assert_incoming_empty,
    echoscu,
    stored_files,
    storescu,
    wait_until,
)
from dicom_storescp import (
    COMMON_SOP_CLASSES,
    StoreScp,
    _core,
    get_common_sop_classes,
    get_common_transfer_syntaxes,
)
from pynetdicom import AE, debug_logger  # noqa: F401
from pynetdicom.presentation import build_context
from rawdul import RawAssociation, c_store_rq

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _associate(port: int, contexts: list[tuple[str, list[str]]], ae_title: str = "PYNETDICOM"):
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 10
    ae.requested_contexts = [build_context(a, ts) for a, ts in contexts]
    return ae.associate(HOST, port, ae_title=SCP_AE)


def test_catalog_counts_and_uids() -> None:
    sop = get_common_sop_classes()
    ts = get_common_transfer_syntaxes()
    assert {k: len(v) for k, v in sop.items()} == {
        "ct": 2,
        "mr": 2,
        "ultrasound": 2,
        "pet": 3,
        "xray": 3,
        "mammography": 5,
        "secondary_capture": 4,
        "radiation_therapy": 4,
        "documents": 4,
        "structured_reports": 3,
        "all_imaging": 17,
        "all": 33,
    }
    assert {k: len(v) for k, v in ts.items()} == {
        "uncompressed": 3,
        "jpeg": 4,
        "jpeg_ls": 2,
        "jpeg2000": 2,
        "rle": 1,
        "mpeg": 4,
        "all_compressed": 13,
        "all": 17,
    }
    assert _core.uid_for_keyword(sop["ultrasound"][0], "sop_class") == (
        "1.2.840.10008.5.1.4.1.1.6.1"
    )
    for names in sop.values():
        for name in names:
            assert _core.uid_for_keyword(name, "sop_class"), name
    mpeg = [_core.uid_for_keyword(n, "transfer_syntax") for n in ts["mpeg"]]
    assert mpeg == [f"1.2.840.10008.1.2.4.{n}" for n in (100, 101, 102, 103)]
    storable = set(_core.storable_transfer_syntax_uids())
    for name in ts["all"]:
        assert _core.uid_for_keyword(name, "transfer_syntax") in storable, name
    # Copies: callers may mutate what they get.
    sop["ct"].append("x")
    assert len(get_common_sop_classes()["ct"]) == 2
    assert len(COMMON_SOP_CLASSES["ct"]) == 2
    # AllStorage is the whole standard, not a short list.
    assert len(_core.storage_sop_class_uids()) > 150


def test_unknown_names_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="abstract_syntaxes"):
        StoreScp(0, out_dir=tmp_path, abstract_syntax_mode="Custom", abstract_syntaxes=["Nope"])
    with pytest.raises(ValueError, match="abstract_syntaxes"):
        # a transfer syntax keyword is not a SOP class
        StoreScp(
            0,
            out_dir=tmp_path,
            abstract_syntax_mode="Custom",
            abstract_syntaxes=["ExplicitVRLittleEndian"],
        )
    with pytest.raises(ValueError, match="transfer_syntaxes"):
        StoreScp(0, out_dir=tmp_path, transfer_syntax_mode="Custom", transfer_syntaxes=["Zip"])
    with pytest.raises(ValueError, match="transfer_syntaxes"):
        StoreScp(0, out_dir=tmp_path, transfer_syntax_mode="Custom", transfer_syntaxes=[])
    with pytest.raises(ValueError, match="abstract_syntax_mode"):
        StoreScp(0, out_dir=tmp_path, abstract_syntax_mode="Everything")  # type: ignore[arg-type]
    # Seed-style names are accepted.
    StoreScp(
        0,
        out_dir=tmp_path,
        transfer_syntax_mode="Custom",
        transfer_syntaxes=["JPEGBaseline", *get_common_transfer_syntaxes()["uncompressed"]],
    )


def test_ct_only_custom_mode(
    scp_factory: Callable[..., RunningScp], corpus: dict[str, Prepared]
) -> None:
    run = scp_factory(
        abstract_syntax_mode="Custom", abstract_syntaxes=get_common_sop_classes()["ct"]
    )
    ct, mr = corpus["CT_small.dcm"], corpus["MR_small.dcm"]
    proc = storescu(run.port, [ct.path, mr.path], "-R", "-xe", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "MR" in out and ("no presentation context" in out.lower() or "rejected" in out.lower())
    run.log.wait_for("OnFileStored", 1)
    run.stop()
    assert [e["sop_instance_uid"] for e in run.log.get("OnFileStored")] == [ct.sop_instance_uid]
    assert stored_files(run.out_dir) == {ct.expected_path(run.out_dir).resolve()}
    assert not mr.expected_path(run.out_dir).exists()


def test_uncompressed_only(
    scp_factory: Callable[..., RunningScp], corpus: dict[str, Prepared]
) -> None:
    jpeg = next(p for p in corpus.values() if p.transfer_syntax_uid == JPEG_BASELINE)
    run = scp_factory(transfer_syntax_mode="UncompressedOnly")
    # Proposed only in its JPEG syntax: that context is refused (reason 4).
    assoc = _associate(
        run.port, [(jpeg.sop_class_uid, [JPEG_BASELINE]), (VERIFICATION, [IMPLICIT])]
    )
    try:
        assert assoc.is_established
        assert [c.abstract_syntax for c in assoc.accepted_contexts] == [VERIFICATION]
        rejected = assoc.rejected_contexts
        assert len(rejected) == 1 and rejected[0].result == 4
    finally:
        assoc.release()
    # With an uncompressed fallback the sender decompresses, and it is stored.
    # (storescu cannot decompress; dcmsend can.)
    proc = subprocess.run(
        ["/usr/bin/dcmsend", "+dly", "-aec", SCP_AE, HOST, str(run.port), str(jpeg.path)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (event,) = run.log.wait_for("OnFileStored", 1)
    assert event["transfer_syntax_uid"] in (EXPLICIT, IMPLICIT, BIG_ENDIAN)
    assert event["sop_instance_uid"] == jpeg.sop_instance_uid
    ds = pydicom.dcmread(event["file"], force=True)
    assert ds.SOPInstanceUID == jpeg.sop_instance_uid


def test_all_storage_accepts_recent_classes_and_refuses_others(scp: RunningScp) -> None:
    recent = [
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
        "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis
        "1.2.840.10008.5.1.4.1.1.481.8",  # RT Ion Plan
        "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy
    ]
    contexts = [(a, [IMPLICIT, BIG_ENDIAN, EXPLICIT]) for a in recent]
    contexts.append((CT, [IMPLICIT, JPEG_BASELINE]))
    contexts.append((STUDY_ROOT_FIND, [IMPLICIT]))
    contexts.append(("1.2.840.10008.1.2.4.50", [IMPLICIT]))  # a TS UID is no SOP class
    assoc = _associate(scp.port, contexts)
    try:
        assert assoc.is_established
        accepted = {c.abstract_syntax: c.transfer_syntax[0] for c in assoc.accepted_contexts}
        # Preference: Explicit VR LE among uncompressed; the sender's compressed
        # syntax when offered.
        assert accepted == {**{a: EXPLICIT for a in recent}, CT: JPEG_BASELINE}
        refused = {c.abstract_syntax: c.result for c in assoc.rejected_contexts}
        assert refused == {STUDY_ROOT_FIND: 3, "1.2.840.10008.1.2.4.50": 3}
    finally:
        assoc.release()


def test_all_mode_accepts_private_abstract_syntax(scp_factory: Callable[..., RunningScp]) -> None:
    run = scp_factory(abstract_syntax_mode="All")
    assoc = _associate(run.port, [("1.2.826.0.1.3680043.9.9999.1", [EXPLICIT])])
    try:
        assert assoc.is_established
        assert len(assoc.accepted_contexts) == 1
    finally:
        assoc.release()


def test_no_acceptable_context_rejects_association(
    scp_factory: Callable[..., RunningScp], corpus: dict[str, Prepared]
) -> None:
    run = scp_factory(abstract_syntax_mode="Custom", abstract_syntaxes=["CTImageStorage"])
    # storescu -R proposes only what its files need: here, MR only.
    proc = storescu(run.port, [corpus["MR_small.dcm"].path], "-R", "-xe", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Association Rejected" in out and "Permanent" in out, out
    (event,) = run.log.wait_for("OnAssociationRejected", 1)
    assert event["calling_ae_title"] == "DCMTK-SCU"
    assert event["result"] == "permanent"
    assert "presentation context" in event["reason"]


def _echoscu_fails_with(port: int, aet: str, aec: str, text: str) -> None:
    proc = subprocess.run(
        [ECHOSCU, "-aet", aet, "-aec", aec, "-to", "5", "-ta", "5", HOST, str(port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert text.lower() in out.lower(), out


def test_max_associations(
    scp_factory: Callable[..., RunningScp], corpus: dict[str, Prepared]
) -> None:
    run = scp_factory(max_associations=2)
    ct = corpus["CT_small.dcm"]
    mr = corpus["MR_small.dcm"]
    held = [
        _associate(run.port, [(CT, [EXPLICIT])]),
        _associate(run.port, [(MR, [EXPLICIT])]),
    ]
    try:
        assert all(a.is_established for a in held)
        # The third is refused: transient, local limit exceeded.
        _echoscu_fails_with(run.port, "THIRD", SCP_AE, "Local Limit Exceeded")
        (event,) = run.log.wait_for("OnAssociationRejected", 1)
        assert event["result"] == "transient" and event["calling_ae_title"] == "THIRD"
        # The two held associations still complete their work.
        for assoc, prepared in zip(held, (ct, mr)):
            ds = pydicom.dcmread(prepared.path)
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
    finally:
        for assoc in held:
            assoc.release()
    run.log.wait_for("OnFileStored", 2)
    # Once they are gone, a new association is accepted again.
    assert wait_until(lambda: echoscu(run.port).returncode == 0, timeout=10)


def test_acse_timeout_drops_silent_peer(scp_factory: Callable[..., RunningScp]) -> None:
    run = scp_factory(acse_timeout=1)
    sock = socket.create_connection((HOST, run.port), timeout=10)
    try:
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server, nothing sent
        assert time.monotonic() - started < 5
    finally:
        sock.close()
    assert echoscu(run.port).returncode == 0


def test_dimse_timeout_drops_peer_stalled_mid_object(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path
) -> None:
    run = scp_factory(dimse_timeout=1)
    data = base_dataset_file.read_bytes()
    ds = pydicom.dcmread(base_dataset_file)
    raw = RawAssociation(HOST, run.port)
    try:
        raw.associate("STALLER", SCP_AE, [(1, str(ds.SOPClassUID), [EXPLICIT])])
        raw.send_command(1, c_store_rq(1, str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        raw.send_dataset(1, data[132:], stop_after=2000)
        started = time.monotonic()
        # The server aborts (A-ABORT, then close) once the DIMSE timeout passes.
        pdu_type, _ = raw.read_pdu()
        assert pdu_type == 0x07
        assert time.monotonic() - started < 5
    finally:
        raw.close()
    (err,) = run.log.wait_for("OnError", 1)
    assert err["calling_ae_title"] == "STALLER"
    assert_incoming_empty(run.out_dir)
    assert stored_files(run.out_dir) == set()
    assert echoscu(run.port).returncode == 0


def _seconds_until_idle_abort(run: RunningScp) -> float:
    """Associate, send nothing, and time the A-ABORT that the receiver sends."""
    raw = RawAssociation(HOST, run.port)
    try:
        raw.associate("IDLER", SCP_AE, [(1, VERIFICATION, [IMPLICIT])])
        started = time.monotonic()
        pdu_type, _ = raw.read_pdu()
        assert pdu_type == 0x07
        return time.monotonic() - started
    finally:
        raw.close()


def test_idle_timeout_aborts_idle_association(scp_factory: Callable[..., RunningScp]) -> None:
    run = scp_factory(idle_timeout=1)
    assert 0.5 < _seconds_until_idle_abort(run) < 5
    assert run.log.get("OnError") == []  # nothing was in flight


def test_idle_timeout_longer_than_dimse_timeout_is_waited_in_full(
    scp_factory: Callable[..., RunningScp],
) -> None:
    # the core waits out an idle timeout in stretches of the DIMSE timeout:
    # the association must outlive the first stretches and end at the idle one
    run = scp_factory(idle_timeout=2.5, dimse_timeout=0.5)
    assert 2.0 < _seconds_until_idle_abort(run) < 6
    assert run.log.get("OnError") == []


@pytest.mark.parametrize(
    ("options", "aet", "aec", "accepted", "message"),
    [
        ({"allowed_calling_ae_titles": ["GOOD"]}, "GOOD", "ANYTHING", True, ""),
        (
            {"allowed_calling_ae_titles": ["GOOD"]},
            "BAD",
            SCP_AE,
            False,
            "Calling AE Title Not Recognized",
        ),
        ({"require_called_ae_title": True}, "X", SCP_AE, True, ""),
        (
            {"require_called_ae_title": True},
            "X",
            "OTHER-SCP",
            False,
            "Called AE Title Not Recognized",
        ),
        ({}, "X", "OTHER-SCP", True, ""),
    ],
)
def test_ae_title_checks(
    scp_factory: Callable[..., RunningScp],
    corpus: dict[str, Prepared],
    options: dict[str, Any],
    aet: str,
    aec: str,
    accepted: bool,
    message: str,
) -> None:
    run = scp_factory(**options)
    ct = corpus["CT_small.dcm"]
    proc = storescu(run.port, [ct.path], "-R", "-xe", aet=aet, aec=aec, check=False)
    out = proc.stdout + proc.stderr
    if accepted:
        assert proc.returncode == 0, out
        (event,) = run.log.wait_for("OnFileStored", 1)
        assert event["calling_ae_title"] == aet
    else:
        assert proc.returncode != 0
        assert message.lower() in out.lower(), out
        (event,) = run.log.wait_for("OnAssociationRejected", 1)
        assert event["calling_ae_title"] == aet and event["called_ae_title"] == aec
        assert event["result"] == "permanent"
        assert not ct.expected_path(run.out_dir).exists()
