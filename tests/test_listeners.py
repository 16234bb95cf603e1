"""Listeners run off the network path: slow or failing listeners never stall reception."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from conftest import (
    RunningScp,
    assert_incoming_empty,
    generate_objects,
    stored_files,
    storescu,
)

COUNT = 50
SLEEP = 0.2


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)


def test_slow_and_failing_listeners_do_not_stall_reception(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    handler = _Records()
    logger = logging.getLogger("dicom_storescp")
    logger.addHandler(handler)
    try:
        run = scp_factory()
        lock = threading.Lock()
        slept: list[str] = []
        raised: list[str] = []

        def raiser(event: dict[str, Any]) -> None:
            with lock:
                raised.append(event["sop_instance_uid"])
            raise RuntimeError(f"listener boom {event['sop_instance_uid']}")

        def sleeper(event: dict[str, Any]) -> None:
            time.sleep(SLEEP)
            with lock:
                slept.append(event["sop_instance_uid"])

        run.scp.add_event_listener("OnFileStored", raiser)
        run.scp.add_event_listener("OnFileStored", sleeper)

        objs = generate_objects(base_dataset_file, tmp_path / "objs", COUNT)
        started = time.monotonic()
        storescu(run.port, [tmp_path / "objs"], "+sd", "-R", "-xe")
        elapsed = time.monotonic() - started
        with lock:
            handled_when_sender_done = len(slept)

        assert elapsed < COUNT * SLEEP / 2, f"storescu took {elapsed:.1f}s"
        assert handled_when_sender_done < COUNT, (
            "the sleepy listener had already handled every event when the sender "
            "finished: reception waited for listeners"
        )
        # Success was answered only after storing: every file is there already.
        want = {o.expected_path(run.out_dir).resolve() for o in objs}
        assert stored_files(run.out_dir) == want
        assert_incoming_empty(run.out_dir)

        stop_started = time.monotonic()
        run.stop()
        stop_took = time.monotonic() - stop_started
        with lock:
            assert sorted(slept) == sorted(o.sop_instance_uid for o in objs), (
                f"after stop() the sleepy listener saw {len(slept)}/{COUNT} events "
                f"(stop took {stop_took:.1f}s)"
            )
            assert len(raised) == COUNT
        assert len(run.log.get("OnFileStored")) == COUNT

        boom = [
            r
            for r in handler.records
            if "listener boom" in r.getMessage()
            or (r.exc_info is not None and "listener boom" in str(r.exc_info[1]))
        ]
        assert boom, (
            "exceptions raised by a listener were not logged on logger 'dicom_storescp'; "
            f"records: {[r.getMessage() for r in handler.records][:5]}"
        )
        assert all(r.levelno >= logging.WARNING for r in boom)
    finally:
        logger.removeHandler(handler)


def test_listener_exception_does_not_stop_later_events(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    """A listener that raises keeps being called, and other listeners too."""
    run = scp_factory()
    calls: list[str] = []

    def raiser(event: dict[str, Any]) -> None:
        calls.append(event["sop_instance_uid"])
        raise ValueError("nope")

    run.scp.add_event_listener("OnFileStored", raiser)
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 5)
    storescu(run.port, [tmp_path / "objs"], "+sd", "-R", "-xe")
    run.log.wait_for("OnFileStored", 5)
    run.stop()
    assert len(calls) == 5
    assert {e["sop_instance_uid"] for e in run.log.get("OnFileStored")} == {
        o.sop_instance_uid for o in objs
    }
