"""Command line: ``dicom-storescp --port 11112 --out-dir ./dicom-storage``.

Exit codes: 0 after a graceful stop (Ctrl-C / SIGTERM), 1 when the receiver
cannot start (bad option, port in use, directory not writable), 2 for bad
command-line usage.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, Callable, Optional

from . import __version__
from ._scp import EVENT_NAMES, StoreScp


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _seconds_or_none(value: str) -> Optional[float]:
    if value.lower() in ("none", "0", "off"):
        return None
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicom-storescp",
        description="Receive DICOM objects (C-STORE SCP) and store them.",
    )
    p.add_argument("--version", action="version", version=f"dicom-storescp {__version__}")
    net = p.add_argument_group("network")
    net.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    net.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    net.add_argument("--ae-title", default="STORE-SCP", help="this SCP's AE title")
    net.add_argument("--max-pdu-length", type=int, default=16384)
    net.add_argument("--strict", action="store_true", help="reject PDUs over the maximum")
    net.add_argument("--max-associations", type=int, default=100)
    net.add_argument("--acse-timeout", type=_seconds_or_none, default=30.0, metavar="SECONDS")
    net.add_argument("--dimse-timeout", type=_seconds_or_none, default=60.0, metavar="SECONDS")
    net.add_argument("--idle-timeout", type=_seconds_or_none, default=300.0, metavar="SECONDS")
    net.add_argument(
        "--allowed-calling-ae-titles",
        type=_csv,
        default=None,
        metavar="AE,AE",
        help="only accept these calling AE titles",
    )
    net.add_argument("--require-called-ae-title", action="store_true")
    tls = p.add_argument_group("TLS (DICOM PS3.15 Annex B)")
    tls.add_argument("--tls-cert", default=None, metavar="PEM", help="server certificate chain")
    tls.add_argument("--tls-key", default=None, metavar="PEM", help="server private key")
    tls.add_argument(
        "--tls-ca", default=None, metavar="PEM", help="require client certificates from this CA"
    )
    neg = p.add_argument_group("negotiation")
    neg.add_argument(
        "--abstract-syntax-mode", default="AllStorage", choices=["AllStorage", "All", "Custom"]
    )
    neg.add_argument("--abstract-syntaxes", type=_csv, default=[], metavar="NAME,UID")
    neg.add_argument(
        "--transfer-syntax-mode", default="All", choices=["All", "UncompressedOnly", "Custom"]
    )
    neg.add_argument("--transfer-syntaxes", type=_csv, default=[], metavar="NAME,UID")
    st = p.add_argument_group("storage")
    st.add_argument("--out-dir", default="./dicom-storage", help="where files are stored")
    st.add_argument("--store-with-file-meta", action="store_true", help="write Part-10 files")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print events as JSON lines")
    out.add_argument("--verbose", "-v", action="store_true", help="log associations and files")
    return p


def _emit(args: argparse.Namespace, name: str, event: Any) -> None:
    if args.json:
        line = json.dumps({"event": name, **event})
        print(line, flush=True)
    elif name == "OnFileStored":
        print(
            f"stored {event['file']} ({event['size']} bytes) from "
            f"{event['calling_ae_title']} {event['peer']}",
            flush=True,
        )
    elif name == "OnError":
        print(f"error: {event['message']}", file=sys.stderr, flush=True)
    elif name == "OnAssociationRejected":
        print(
            f"rejected association from {event['calling_ae_title']} at {event['peer']}: "
            f"{event['reason']}",
            file=sys.stderr,
            flush=True,
        )
    elif name == "OnServerStarted":
        print(
            f"listening on {event['host']}:{event['port']} as {event['ae_title']}",
            file=sys.stderr,
            flush=True,
        )


def _printer(args: argparse.Namespace, name: str) -> Callable[[Any], None]:
    def listener(event: Any) -> None:
        _emit(args, name, event)

    return listener


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        scp = StoreScp(
            port=args.port,
            host=args.host,
            ae_title=args.ae_title,
            max_pdu_length=args.max_pdu_length,
            strict=args.strict,
            max_associations=args.max_associations,
            acse_timeout=args.acse_timeout,
            dimse_timeout=args.dimse_timeout,
            idle_timeout=args.idle_timeout,
            allowed_calling_ae_titles=args.allowed_calling_ae_titles,
            require_called_ae_title=args.require_called_ae_title,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            abstract_syntax_mode=args.abstract_syntax_mode,
            abstract_syntaxes=args.abstract_syntaxes,
            transfer_syntax_mode=args.transfer_syntax_mode,
            transfer_syntaxes=args.transfer_syntaxes,
            out_dir=args.out_dir,
            store_with_file_meta=args.store_with_file_meta,
            verbose=args.verbose,
        )
    except (ValueError, NotImplementedError) as e:
        print(f"dicom-storescp: {e}", file=sys.stderr)
        return 1
    for name in EVENT_NAMES:
        scp.add_event_listener(name, _printer(args, name))

    def on_term(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        scp.start()
    except OSError as e:
        print(f"dicom-storescp: {e}", file=sys.stderr)
        return 1
    scp.listen()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
