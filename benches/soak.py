"""Soak test: many objects over many concurrent associations, then check that
nothing was lost and that the receiver's memory and file descriptors went
back to where they started.

    python3 benches/soak.py [--objects 20000] [--associations 50] [--rounds 2]

The receiver is dicom-storescp through its Python API (benches/scp_python.py)
in its own process; the sender is benches/loadgen. Each round sends every
object once (round 2 overwrites round 1's files: the re-send path). Prints and
writes (--out) a JSON report; exit status 1 if an object is missing, a spool
file is left, or descriptors leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import datagen  # noqa: E402

LOADGEN = HERE / "loadgen" / "target" / "release" / "loadgen"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("receiver did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=20000)
    ap.add_argument("--associations", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="soak-"))
    data = work / "data"
    if len(list(data.glob("*.dcm"))) != args.objects:
        data.mkdir(parents=True, exist_ok=True)
        for f in data.glob("*.dcm"):
            f.unlink()
        datagen.make_small(data, args.objects)
    files = sorted(data.glob("*.dcm"))
    subprocess.run(
        [
            "cargo",
            "build",
            "--release",
            "-q",
            "--manifest-path",
            str(HERE / "loadgen" / "Cargo.toml"),
        ],
        check=True,
    )
    out_dir = work / "store"
    port = _free_port()
    receiver = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "scp_python.py"),
            "--port",
            str(port),
            "--out-dir",
            str(out_dir),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    report: dict[str, object] = {
        "objects": args.objects,
        "associations": args.associations,
        "rounds": args.rounds,
    }
    ok = True
    try:
        _wait_port(port)
        time.sleep(0.5)
        baseline = _status(receiver.pid)
        report["baseline"] = baseline
        rounds = []
        for r in range(args.rounds):
            started = time.monotonic()
            proc = subprocess.run(
                [str(LOADGEN), "--port", str(port), "--associations", str(args.associations)]
                + ["--called-ae", "STORE-SCP", "--dir", str(data)],
                capture_output=True,
                text=True,
            )
            elapsed = time.monotonic() - started
            if proc.returncode != 0:
                ok = False
            time.sleep(1.0)  # let the last associations close
            after = _status(receiver.pid)
            rounds.append(
                {
                    "round": r + 1,
                    "loadgen_exit": proc.returncode,
                    "loadgen_tail": proc.stdout.strip().splitlines()[-1:]
                    + proc.stderr.strip().splitlines()[-3:],
                    "elapsed_s": round(elapsed, 2),
                    "files_per_s": round(len(files) / elapsed, 1),
                    "after": after,
                }
            )
        report["rounds_detail"] = rounds
        stored = [p for p in out_dir.rglob("*.dcm") if ".incoming" not in p.parts]
        leftovers = (
            [p for p in (out_dir / ".incoming").iterdir()]
            if (out_dir / ".incoming").exists()
            else []
        )
        # idle blocking-pool threads exit after their keep-alive, and the
        # study (2 s timeout) completes and is forgotten
        time.sleep(7.0)
        final = _status(receiver.pid)
        report["stored_files"] = len(stored)
        report["spool_leftovers"] = len(leftovers)
        report["final"] = final
        report["fd_delta"] = final["fds"] - baseline["fds"]
        report["rss_delta_kib"] = final["VmRSS"] - baseline["VmRSS"]
        if len(stored) != len(files) or leftovers or final["fds"] > baseline["fds"]:
            ok = False
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            receiver.kill()
            ok = False
    report["ok"] = ok
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
