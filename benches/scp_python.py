"""dicom-storescp through its Python API, as the benchmark runs it.

    python3 benches/scp_python.py --port P --out-dir D [--listener noop|none|work]
                                  [--extract-tags] [--summary FILE]

``--listener noop`` (default) registers an ``OnFileStored`` listener that only
counts events and notes when the last one arrived; ``none`` registers no
listener at all; ``work`` does what an application typically does per file
(stat the file, group it by series, serialise the event to JSON).
``--extract-tags`` asks the core for 10 tags per file.

SIGUSR1 calls glibc's ``malloc_trim(0)`` (for ``soak.py --trim``).
Runs until SIGTERM or SIGINT, then stops gracefully (every event delivered)
and writes a JSON summary (events seen, CLOCK_MONOTONIC time of the last one)
to ``--summary``. Exit status 3: an option is not implemented in this build.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from collections import defaultdict
from typing import Any

from dicom_storescp import StoreScp

NOT_IMPLEMENTED = 3

# The 10 tags of the "extract tags" variant; datagen.py gives every object all of them.
EXTRACT_TAGS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
]


def _malloc_trim() -> None:
    if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=1: what Python holds
        current, peak = tracemalloc.get_traced_memory()
        print(f"tracemalloc: current {current} peak {peak}", file=sys.stderr)
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:8]:
            print(f"tracemalloc: {stat}", file=sys.stderr)
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(None).malloc_trim(0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--listener", choices=("noop", "none", "work"), default="noop")
    p.add_argument("--extract-tags", action="store_true")
    p.add_argument("--no-file-meta", action="store_true")
    p.add_argument("--summary")
    p.add_argument("--study-timeout", type=float, default=30.0)
    args = p.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Soak diagnostics (benches/soak.py --trim): hand glibc's free heap back.
    signal.signal(signal.SIGUSR1, lambda *_: _malloc_trim())

    state: dict[str, Any] = {"events": 0, "last_event": None, "bytes": 0}
    by_series: defaultdict[str, list[str]] = defaultdict(list)

    def noop(event: Any) -> None:
        state["events"] += 1
        state["last_event"] = time.monotonic()

    def work(event: Any) -> None:
        state["bytes"] += os.stat(event["file"]).st_size
        by_series[event["series_instance_uid"]].append(event["sop_instance_uid"])
        json.dumps(event, default=str)
        state["events"] += 1
        state["last_event"] = time.monotonic()

    try:
        scp = StoreScp(
            port=args.port,
            out_dir=args.out_dir,
            store_with_file_meta=not args.no_file_meta,
            extract_tags=EXTRACT_TAGS if args.extract_tags else (),
            study_timeout=args.study_timeout,
        )
    except NotImplementedError as e:
        print(f"scp_python: {e}", file=sys.stderr)
        return NOT_IMPLEMENTED
    if args.listener == "noop":
        scp.add_event_listener("OnFileStored", noop)
    elif args.listener == "work":
        scp.add_event_listener("OnFileStored", work)
    scp.start()
    while not stop.wait(0.5):
        pass
    scp.stop()
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump({"events": state["events"], "last_event": state["last_event"]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
