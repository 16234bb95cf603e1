"""OnStudyCompleted timing: quiet period after the last instance, across
associations, per StoreScp instance, flushed by stop()."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from conftest import (
    DCMTK_AE,
    DCMTK_ENV,
    HOST,
    SCP_AE,
    STORESCU,
    EventLog,
    Prepared,
    RunningScp,
    generate_objects,
    storescu,
)
from dicom_storescp import StoreScp
from pydicom.uid import generate_uid


def _instances(study: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["sop_instance_uid"]: i for s in study["series"] for i in s["instances"]}


class Stamped:
    """Records when each event reached the listener."""

    def __init__(self, scp: StoreScp) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        for name in ("OnFileStored", "OnStudyCompleted"):
            scp.add_event_listener(name, self._listener(name))

    def _listener(self, name: str) -> Callable[[dict[str, Any]], None]:
        def on_event(event: dict[str, Any]) -> None:
            with self.lock:
                self.events.append((time.monotonic(), name, event))

        return on_event

    def times(self, name: str) -> list[float]:
        with self.lock:
            return [t for t, n, _ in self.events if n == name]


def test_timer_resets_across_associations(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    timeout = 1.5
    run = scp_factory(study_timeout=timeout, extract_tags=["InstanceNumber"])
    stamps = Stamped(run.scp)
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 8)
    first, second = objs[:4], objs[4:]
    storescu(run.port, [o.path for o in first], "-xe")
    time.sleep(timeout * 0.5)  # less than the timeout
    assert run.log.get("OnStudyCompleted") == []
    storescu(run.port, [o.path for o in second], "-xe")  # a new association
    (study,) = run.log.wait_for("OnStudyCompleted", 1, timeout=timeout + 10)
    assert study["study_instance_uid"] == objs[0].study_instance_uid
    assert set(_instances(study)) == {o.sop_instance_uid for o in objs}
    (series,) = study["series"]
    assert [i["tags"]["InstanceNumber"] for i in series["instances"]] == [
        str(n) for n in range(1, 9)
    ], "instances are listed in arrival order"
    for inst in series["instances"]:
        assert Path(inst["file"]).is_file()
        assert inst["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
        assert inst["sop_class_uid"] == objs[0].sop_class_uid
    # completed a full quiet period after the *last* instance, not the first
    last_stored = max(stamps.times("OnFileStored"))
    (completed,) = stamps.times("OnStudyCompleted")
    assert completed - last_stored >= timeout * 0.9, completed - last_stored
    # exactly one event: nothing more after another quiet period
    time.sleep(timeout + 0.5)
    assert len(run.log.get("OnStudyCompleted")) == 1


def test_interleaved_studies_over_two_associations(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    run = scp_factory(study_timeout=1.0)
    a = generate_objects(base_dataset_file, tmp_path / "a", 6)
    b = generate_objects(base_dataset_file, tmp_path / "b", 6)
    # each association carries both studies, alternating
    lanes = [
        [x.path for pair in zip(a[:3], b[:3]) for x in pair],
        [x.path for pair in zip(b[3:], a[3:]) for x in pair],
    ]
    procs = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                DCMTK_AE,
                "-aec",
                SCP_AE,
                "-xe",
                HOST,
                str(run.port),
                *map(str, lane),
            ],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        for lane in lanes
    ]
    for p in procs:
        assert p.wait(60) == 0, p.stderr.read() if p.stderr else ""
    studies = run.log.wait_for("OnStudyCompleted", 2, timeout=15)
    by_uid = {s["study_instance_uid"]: s for s in studies}
    assert set(by_uid) == {a[0].study_instance_uid, b[0].study_instance_uid}
    assert set(_instances(by_uid[a[0].study_instance_uid])) == {o.sop_instance_uid for o in a}
    assert set(_instances(by_uid[b[0].study_instance_uid])) == {o.sop_instance_uid for o in b}
    time.sleep(1.5)
    assert len(run.log.get("OnStudyCompleted")) == 2


def test_new_instances_after_completion_start_a_new_period(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    run = scp_factory(study_timeout=0.5)
    study = generate_uid()
    first = generate_objects(base_dataset_file, tmp_path / "1", 2, study_uid=study)
    later = generate_objects(base_dataset_file, tmp_path / "2", 3, study_uid=study)
    storescu(run.port, [o.path for o in first], "-xe")
    run.log.wait_for("OnStudyCompleted", 1, timeout=10)
    storescu(run.port, [o.path for o in later], "-xe")
    done = run.log.wait_for("OnStudyCompleted", 2, timeout=10)
    assert [s["study_instance_uid"] for s in done] == [study, study]
    assert set(_instances(done[0])) == {o.sop_instance_uid for o in first}
    assert set(_instances(done[1])) == {o.sop_instance_uid for o in later}


def test_stop_reports_pending_studies_before_returning(
    tmp_path: Path, base_dataset_file: Path
) -> None:
    log = EventLog()
    scp = StoreScp(port=0, out_dir=str(tmp_path / "out"), host=HOST)  # default 30 s
    order: list[str] = []
    for name in ("OnFileStored", "OnStudyCompleted"):
        scp.add_event_listener(name, log.listener(name))
        scp.add_event_listener(name, lambda _e, name=name: order.append(name))
    scp.start()
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    other: list[Prepared] = generate_objects(base_dataset_file, tmp_path / "other", 2)
    storescu(scp.port, [o.path for o in objs + other], "-xe")
    log.wait_for("OnFileStored", 5)
    assert log.get("OnStudyCompleted") == []
    started = time.monotonic()
    scp.stop()
    assert time.monotonic() - started < 10
    studies = log.get("OnStudyCompleted")  # delivered before stop() returned
    assert len(studies) == 2
    by_uid = {s["study_instance_uid"]: s for s in studies}
    assert set(_instances(by_uid[objs[0].study_instance_uid])) == {o.sop_instance_uid for o in objs}
    assert set(_instances(by_uid[other[0].study_instance_uid])) == {
        o.sop_instance_uid for o in other
    }
    assert order == ["OnFileStored"] * 5 + ["OnStudyCompleted"] * 2


def test_two_instances_never_share_files_or_studies(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    a = scp_factory(ae_title="SCP-A", study_timeout=0.5)
    b = scp_factory(ae_title="SCP-B", study_timeout=0.5)
    study = generate_uid()  # the same study sent to both, different instances
    to_a = generate_objects(base_dataset_file, tmp_path / "a", 3, study_uid=study)
    to_b = generate_objects(base_dataset_file, tmp_path / "b", 2, study_uid=study)
    storescu(a.port, [o.path for o in to_a], "-xe", aec="SCP-A")
    storescu(b.port, [o.path for o in to_b], "-xe", aec="SCP-B")
    (sa,) = a.log.wait_for("OnStudyCompleted", 1, timeout=10)
    (sb,) = b.log.wait_for("OnStudyCompleted", 1, timeout=10)
    assert set(_instances(sa)) == {o.sop_instance_uid for o in to_a}
    assert set(_instances(sb)) == {o.sop_instance_uid for o in to_b}
    for inst in _instances(sa).values():
        assert Path(inst["file"]).is_relative_to(a.out_dir)
    for inst in _instances(sb).values():
        assert Path(inst["file"]).is_relative_to(b.out_dir)
    assert {e["sop_instance_uid"] for e in a.log.get("OnFileStored")} == {
        o.sop_instance_uid for o in to_a
    }
    assert {e["sop_instance_uid"] for e in b.log.get("OnFileStored")} == {
        o.sop_instance_uid for o in to_b
    }
    # stopping one reports nothing on the other
    a.stop()
    time.sleep(0.7)
    assert len(b.log.get("OnStudyCompleted")) == 1
    assert len(a.log.get("OnStudyCompleted")) == 1
