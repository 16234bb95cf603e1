"""scp.stats(): counters of associations, objects and studies, checked
against what real peers did."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from conftest import (
    HOST,
    SCP_AE,
    RunningScp,
    generate_objects,
    storescu,
    wait_until,
)
from rawdul import EXPLICIT_LE, RawAssociation, c_store_rq


def test_stats_count_what_happened(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    run = scp_factory(allowed_calling_ae_titles=["GOOD"], study_timeout=0.5)
    zero = run.scp.stats()
    assert set(zero) == {
        "associations_open",
        "associations_total",
        "associations_rejected",
        "objects_stored",
        "objects_failed",
        "bytes_stored",
        "studies_pending",
        "studies_completed",
    }
    assert all(v == 0 for v in zero.values())

    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    storescu(run.port, [o.path for o in objs], "-R", "-xe", aet="GOOD")
    events = run.log.wait_for("OnFileStored", 3)
    # a refused association
    proc = storescu(run.port, [objs[0].path], "-R", "-xe", aet="BAD", check=False)
    assert proc.returncode != 0
    # a store refused for a bad UID (nothing written)
    raw = RawAssociation(HOST, run.port)
    try:
        raw.associate("GOOD", SCP_AE, [(1, "1.2.840.10008.5.1.4.1.1.4", [EXPLICIT_LE])])
        raw.send_command(1, c_store_rq(1, "1.2.840.10008.5.1.4.1.1.4", "1.2.abc"))
        raw.send_dataset(1, b"\x08\x00\x18\x00UI\x08\x001.2.abc\x00")
        raw.read_response()
        assert raw.release() == 0x06
    finally:
        raw.close()
    run.log.wait_for("OnError", 1)
    assert wait_until(lambda: run.scp.stats()["studies_completed"] == 1, timeout=10)
    stats = run.scp.stats()
    assert stats == {
        "associations_open": 0,
        "associations_total": 2,
        "associations_rejected": 1,
        "objects_stored": 3,
        "objects_failed": 1,
        "bytes_stored": sum(e["size"] for e in events),
        "studies_pending": 0,
        "studies_completed": 1,
    }
    run.stop()
    assert run.scp.stats() == stats  # still readable after stop()
