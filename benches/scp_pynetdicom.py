"""A pynetdicom C-STORE SCP that writes each object's bytes without decoding them.

    python3 benches/scp_pynetdicom.py --port P --out-dir D [--chunked] [--summary FILE]

The ``evt.EVT_C_STORE`` handler writes ``event.encoded_dataset()`` (preamble,
file meta and the data set exactly as received: no decode, no re-encode) to
``{out_dir}/{SOPInstanceUID}.dcm``. This is the fastest storage handler
pynetdicom offers, the fair competitor for a raw-bytes receiver.

``--chunked`` sets ``_config.STORE_RECV_CHUNKED_DATASET``: pynetdicom spools
each data set to a temporary file (here inside ``{out_dir}/.tmp``) and the
handler renames it into place, so memory stays flat for large objects.

TCP_NODELAY is set on every accepted socket, as the other receivers do.
Runs until SIGTERM or SIGINT; ``--summary`` gets a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


def _safe_uid(uid: object) -> bool:
    s = str(uid)
    return 0 < len(s) <= 64 and all(part.isdigit() for part in s.split("."))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--chunked", action="store_true")
    p.add_argument("--summary")
    args = p.parse_args()
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if args.chunked:
        _config.STORE_RECV_CHUNKED_DATASET = True
        # Same filesystem as out_dir, so the spooled file can be renamed into place.
        tempfile.tempdir = os.path.join(out_dir, ".tmp")
        os.makedirs(tempfile.tempdir, exist_ok=True)

    state: dict[str, Any] = {"events": 0, "last_event": None, "failures": 0}

    def handle_store(event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        if not _safe_uid(uid):
            state["failures"] += 1
            return CANNOT_UNDERSTAND
        path = os.path.join(out_dir, f"{uid}.dcm")
        try:
            if args.chunked:
                os.replace(event.dataset_path, path)
            else:
                with open(path, "wb") as f:
                    f.write(event.encoded_dataset())
        except OSError:
            state["failures"] += 1
            return OUT_OF_RESOURCES
        state["events"] += 1
        state["last_event"] = time.monotonic()
        return SUCCESS

    def handle_open(event: Any) -> None:
        with contextlib.suppress(AttributeError, OSError):
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    ae = AE(ae_title="PYNETDICOM")
    for cx in AllStoragePresentationContexts:
        if cx.abstract_syntax is not None:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 100

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = ae.start_server(
        (args.host, args.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, handle_store), (evt.EVT_CONN_OPEN, handle_open)],
    )
    while not stop.wait(0.5):
        pass
    if server is not None:
        server.shutdown()
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(state, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
