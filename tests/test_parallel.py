"""Several senders at once, each on its own association."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
from conftest import (
    DCMTK_ENV,
    HOST,
    SCP_AE,
    STORESCU,
    RunningScp,
    assert_file_stored,
    assert_incoming_empty,
    by_sop_uid,
    dataset_bytes,
    generate_objects,
    stored_files,
    wait_until,
)
from pydicom.uid import generate_uid

SENDERS = 4
PER_SENDER = 110


def test_four_storescu_processes_in_parallel(
    scp: RunningScp, base_dataset_file: Path, tmp_path: Path
) -> None:
    study = generate_uid()
    batches = [
        generate_objects(base_dataset_file, tmp_path / f"sender{i}", PER_SENDER, study_uid=study)
        for i in range(SENDERS)
    ]
    procs = []
    started = time.monotonic()
    for i in range(SENDERS):
        cmd = [
            STORESCU, "-aet", f"SENDER{i}", "-aec", SCP_AE, "-R", "-xe", "+sd",
            HOST, str(scp.port), str(tmp_path / f"sender{i}"),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=DCMTK_ENV,
                stdin=subprocess.DEVNULL,
            )
        )
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"sender {i} exited {proc.returncode}: {err[-2000:]}"
    elapsed = time.monotonic() - started

    total = SENDERS * PER_SENDER
    events = by_sop_uid(scp.log.wait_for("OnFileStored", total, timeout=60))
    for i, batch in enumerate(batches):
        for obj in batch:
            assert_file_stored(
                events[obj.sop_instance_uid],
                obj,
                scp.out_dir,
                dataset_bytes(obj.path),
                calling_ae=f"SENDER{i}",
            )
    want = {obj.expected_path(scp.out_dir).resolve() for b in batches for obj in b}
    assert len(want) == total
    assert stored_files(scp.out_dir) == want
    assert_incoming_empty(scp.out_dir)
    scp.stop()
    assert len(scp.log.get("OnFileStored")) == total
    assert scp.log.get("OnError") == []
    # Four associations on two cores: it should not be slower than ~50 objects/s.
    assert elapsed < total / 50, f"{total} objects took {elapsed:.1f}s"
    # and the senders really overlapped: every association saw its objects
    peers = {ev["peer"] for ev in scp.log.get("OnFileStored")}
    assert len(peers) == SENDERS, peers


def _threads_named(name: str) -> int:
    return sum(
        1 for comm in Path("/proc/self/task").glob("*/comm") if comm.read_text().strip() == name
    )


def test_each_association_has_a_thread_that_ends_with_it(
    scp: RunningScp, base_dataset_file: Path, tmp_path: Path
) -> None:
    """Plain TCP to the filesystem: one thread per association, gone after it."""
    from pynetdicom import AE

    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    first = pydicom.dcmread(objs[0].path)
    assert _threads_named("storescp-assoc") == 0
    ae = AE(ae_title="THREADS")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    held = [ae.associate(HOST, scp.port, ae_title=SCP_AE) for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        assert wait_until(lambda: _threads_named("storescp-assoc") == 3)
        # the threads do the work: an object over each is stored
        for assoc, obj in zip(held, objs):
            status = assoc.send_c_store(pydicom.dcmread(obj.path))
            assert status.Status == 0x0000
        events = by_sop_uid(scp.log.wait_for("OnFileStored", 3, timeout=30))
        for obj in objs:
            assert_file_stored(
                events[obj.sop_instance_uid],
                obj,
                scp.out_dir,
                dataset_bytes(obj.path),
                calling_ae="THREADS",
            )
    finally:
        for assoc in held:
            assoc.release()
    assert wait_until(lambda: _threads_named("storescp-assoc") == 0)
