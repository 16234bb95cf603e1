"""Memory the receiver must not hold on to once an event is delivered (the
soak, benches/soak.py, measures the process as a whole)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from conftest import HOST, generate_objects, storescu
from dicom_storescp import StoreScp


class _Probe:
    """Weakly referenceable marker hung on an event dict by a listener."""


def test_dispatcher_keeps_no_delivered_event(base_dataset_file: Path, tmp_path: Path) -> None:
    """An OnStudyCompleted event carries every instance of the study (tens of
    MiB for a large one): once the listeners returned, the dispatcher must
    not keep it alive until the next event arrives."""
    scp = StoreScp(port=0, host=HOST, out_dir=str(tmp_path / "out"), study_timeout=0.5)
    probes: list[weakref.ref[_Probe]] = []
    studied = threading.Event()

    def tag(done: threading.Event | None) -> Callable[[dict[str, Any]], None]:
        def listener(event: dict[str, Any]) -> None:
            probe = _Probe()
            event["probe"] = probe
            probes.append(weakref.ref(probe))
            if done is not None:
                done.set()

        return listener

    scp.add_event_listener("OnFileStored", tag(None))
    scp.add_event_listener("OnStudyCompleted", tag(studied))
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    with scp:
        storescu(int(scp.port or 0), [o.path for o in objs])
        assert studied.wait(15), "no OnStudyCompleted"
        # the dispatcher wakes at least every 0.5 s when nothing arrives
        deadline = time.monotonic() + 5
        while any(p() is not None for p in probes) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = sum(p() is not None for p in probes)
        assert len(probes) == 4
        assert alive == 0, f"{alive} delivered event(s) still referenced while idle"


def test_importing_the_package_leaves_asyncio_out() -> None:
    """asyncio (with ssl) costs a synchronous receiver ~8 MB of RSS: it is
    imported only by the async API, when that is used."""
    code = (
        "import sys, dicom_storescp, dicom_storescp.cli; "
        "s = dicom_storescp.StoreScp(port=0, out_dir='.'); "
        "assert 'asyncio' not in sys.modules, 'asyncio imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
