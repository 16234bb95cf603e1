#!/usr/bin/env python3
"""Benchmark harness: dicom-storescp against dcmtk storescp and pynetdicom.

    python3 benches/run.py                 # full run (a 1 GiB object included), medians of 3
    python3 benches/run.py --quick         # smaller data, 1 repetition
    python3 benches/run.py --smoke         # every receiver, sender, data set and storage once,
                                           # on tiny data, in well under a minute

Every group of runs (data set, storage, sender) starts with one untimed pass
of the whole data set, so that no receiver pays for cold caches (the first
timed run of a session was up to 2x slower). Every receiver is started fresh
for every timed run, warmed with one tiny object, then timed while a sender
pushes a data set; its CPU time and peak RSS
are measured from outside (see measure.py) and the stored files are counted.
Results: a table on stdout and JSON (``--out``, default benches/out/results.json).
See benches/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import datagen
import measure

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
LOADGEN_MANIFEST = BENCH / "loadgen" / "Cargo.toml"
LOADGEN = BENCH / "loadgen" / "target" / "release" / "loadgen"
NOT_IMPLEMENTED = 3  # exit status of scp_python.py for an option this build lacks

# Every process of the benchmark gets this: dcmtk leaves Nagle's algorithm on otherwise.
ENV = {**os.environ, "TCP_NODELAY": "1"}


# ---------------------------------------------------------------- receivers


@dataclass
class Receiver:
    name: str
    family: str  # "dicom-storescp", "dcmtk", "pynetdicom" or "reference"
    description: str
    argv: Callable[[int, Path, Path], list[str]]  # (port, out_dir, summary file)
    forks: bool = False  # spawns a process per association
    stores: bool = True  # False: receives and discards (sender ceiling)
    summary: bool = False  # writes a JSON summary (events seen) on SIGTERM


def _dicom_storescp_cli() -> list[str]:
    script = Path(sys.executable).parent / "dicom-storescp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dicom_storescp"]


def _scp_python(*extra: str) -> Callable[[int, Path, Path], list[str]]:
    def argv(port: int, out: Path, summary: Path) -> list[str]:
        return [
            sys.executable,
            str(BENCH / "scp_python.py"),
            "--port",
            str(port),
            "--out-dir",
            str(out),
            "--summary",
            str(summary),
            *extra,
        ]

    return argv


def _scp_pynetdicom(*extra: str) -> Callable[[int, Path, Path], list[str]]:
    def argv(port: int, out: Path, summary: Path) -> list[str]:
        return [
            sys.executable,
            str(BENCH / "scp_pynetdicom.py"),
            "--port",
            str(port),
            "--out-dir",
            str(out),
            "--summary",
            str(summary),
            *extra,
        ]

    return argv


RECEIVERS = {
    r.name: r
    for r in [
        Receiver(
            "dicom-storescp-py",
            "dicom-storescp",
            "dicom-storescp, Python API, no-op OnFileStored listener",
            _scp_python("--listener", "noop"),
            summary=True,
        ),
        Receiver(
            "dicom-storescp-cli",
            "dicom-storescp",
            "dicom-storescp command line (--store-with-file-meta, stdout to /dev/null)",
            lambda port, out, _s: [
                *_dicom_storescp_cli(),
                "--port",
                str(port),
                "--out-dir",
                str(out),
                "--store-with-file-meta",
            ],
        ),
        Receiver(
            "dcmtk-fork",
            "dcmtk",
            "dcmtk storescp --fork +B (a process per association, bit-preserving)",
            lambda port, out, _s: [STORESCP, "--fork", "+B", "-od", str(out), str(port)],
            forks=True,
        ),
        Receiver(
            "dcmtk",
            "dcmtk",
            "dcmtk storescp, default options",
            lambda port, out, _s: [STORESCP, "-od", str(out), str(port)],
        ),
        Receiver(
            "pynetdicom",
            "pynetdicom",
            "pynetdicom SCP writing encoded_dataset() bytes (no decode)",
            _scp_pynetdicom(),
            summary=True,
        ),
        Receiver(
            "dcmtk-ignore",
            "reference",
            "sender ceiling: dcmtk storescp --fork --ignore (receives, stores nothing)",
            lambda port, _o, _s: [STORESCP, "--fork", "--ignore", str(port)],
            forks=True,
            stores=False,
        ),
        # Variants, run on fewer combinations.
        Receiver(
            "dicom-storescp-py-none",
            "dicom-storescp",
            "dicom-storescp, Python API, no listener at all",
            _scp_python("--listener", "none"),
        ),
        Receiver(
            "dicom-storescp-py-work",
            "dicom-storescp",
            "dicom-storescp, Python API, listener doing work (stat, group, JSON)",
            _scp_python("--listener", "work"),
            summary=True,
        ),
        Receiver(
            "dicom-storescp-py-tags",
            "dicom-storescp",
            "dicom-storescp, Python API, no-op listener, extracting 10 tags",
            _scp_python("--listener", "noop", "--extract-tags"),
            summary=True,
        ),
        Receiver(
            "pynetdicom-chunked",
            "pynetdicom",
            "pynetdicom SCP, STORE_RECV_CHUNKED_DATASET (spooled to disk, renamed)",
            _scp_pynetdicom("--chunked"),
            summary=True,
        ),
    ]
}
MAIN_RECEIVERS = [
    "dicom-storescp-py",
    "dicom-storescp-cli",
    "dcmtk-fork",
    "dcmtk",
    "pynetdicom",
    "dcmtk-ignore",
]
VARIANT_RECEIVERS = ["dicom-storescp-py-none", "dicom-storescp-py-work", "dicom-storescp-py-tags"]
BIG_RECEIVERS = [*MAIN_RECEIVERS, "pynetdicom-chunked"]


# ---------------------------------------------------------------- senders


@dataclass
class Sent:
    ok: bool
    elapsed: float  # seconds, as the sender saw them
    t0: float  # CLOCK_MONOTONIC when sending started
    cpu: float  # sender CPU seconds
    error: str = ""


@dataclass
class Sender:
    name: str
    description: str
    tool: str  # "storescu" or "loadgen"
    associations: int


def _split(files: Sequence[Path], n: int) -> list[list[Path]]:
    per = -(-len(files) // n)
    return [list(files[i : i + per]) for i in range(0, len(files), per)]


@contextlib.contextmanager
def _watchdog(pids: Sequence[int], timeout: float) -> Iterator[None]:
    """Kills the process groups of ``pids`` (started by us) if still running after ``timeout``."""

    def fire() -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    timer = threading.Timer(timeout, fire)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _wait4(proc: subprocess.Popen[Any]) -> tuple[int, Any]:
    """Reap ``proc`` with wait4 for its rusage; keeps Popen consistent."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def send_storescu(files: Sequence[Path], port: int, n: int, timeout: float, log: Path) -> Sent:
    with open(log, "ab") as err:
        t0 = time.monotonic()
        procs = [
            subprocess.Popen(
                [STORESCU, "-aet", "BENCH", "127.0.0.1", str(port), *map(str, chunk)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=ENV,
                start_new_session=True,
            )
            for chunk in _split(files, n)
        ]
        with _watchdog([p.pid for p in procs], timeout):
            results = [_wait4(p) for p in procs]
        elapsed = time.monotonic() - t0
    cpu = sum(u.ru_utime + u.ru_stime for _, u in results)
    codes = [rc for rc, _ in results]
    ok = all(rc == 0 for rc in codes)
    return Sent(ok, elapsed, t0, cpu, "" if ok else f"storescu exit codes {codes}, see {log}")


class Loadgen:
    """benches/loadgen, started and ready (probe association done, objects
    encoded) before the measurement starts; :meth:`go` runs the timed part."""

    def __init__(self, files: Sequence[Path], port: int, n: int, timeout: float, log: Path):
        self.timeout = timeout
        self.log = log
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as lst:
            lst.write("".join(f"{f}\n" for f in files))
        self.list = lst.name
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    str(LOADGEN), "--port", str(port), "--associations", str(n),
                    "--timeout", str(int(timeout)), "--wait-go", "--list", lst.name,
                ],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=ENV,
                start_new_session=True, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        with _watchdog([self.proc.pid], timeout):
            self.ready = self.proc.stdout.readline().strip() == "ready"

    def go(self) -> Sent:
        proc = self.proc
        assert proc.stdin is not None and proc.stdout is not None
        report = None
        t0 = time.monotonic()
        try:
            with _watchdog([proc.pid], self.timeout):
                if self.ready:
                    proc.stdin.write("go\n")
                    proc.stdin.close()
                    t0 = time.monotonic()
                for line in proc.stdout:
                    if line.startswith("{"):
                        report = json.loads(line)
                rc, usage = _wait4(proc)
        finally:
            os.unlink(self.list)
        cpu = usage.ru_utime + usage.ru_stime
        if report is None:
            return Sent(
                False, time.monotonic() - t0, t0, cpu, f"loadgen exit {rc}: {_tail(self.log)}"
            )
        ok = bool(report["ok"]) and rc == 0
        return Sent(ok, float(report["elapsed_s"]), t0, cpu, "" if ok else f"loadgen: {report}")


SENDERS = {
    s.name: s
    for s in [
        Sender("storescu", "dcmtk storescu, 1 association", "storescu", 1),
        Sender("storescu-x4", "4 dcmtk storescu processes, a quarter each", "storescu", 4),
        Sender("loadgen", "benches/loadgen, 1 association", "loadgen", 1),
        Sender("loadgen-x4", "benches/loadgen, 4 associations", "loadgen", 4),
    ]
}


def prepare(
    sender: Sender, files: Sequence[Path], port: int, timeout: float, log: Path
) -> Callable[[], Sent]:
    """Everything a sender does before the clock starts; returns the timed part."""
    if sender.tool == "loadgen":
        return Loadgen(files, port, sender.associations, timeout, log).go
    return lambda: send_storescu(files, port, sender.associations, timeout, log)


# ---------------------------------------------------------------- one timed run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(1.0)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


def count_files(root: Path) -> tuple[int, int]:
    """Regular files under ``root`` and their total size, hidden directories skipped."""
    n = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            n += 1
            with contextlib.suppress(OSError):
                size += os.stat(os.path.join(dirpath, name)).st_size
    return n, size


def wait_count(root: Path, want: int, timeout: float) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        n, size = count_files(root)
        if n >= want or time.monotonic() > deadline:
            return n, size
        time.sleep(0.05)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


class Skip(Exception):
    """The receiver cannot run this configuration (e.g. an option not built yet)."""


@dataclass
class Data:
    name: str
    files: list[Path]
    dataset_bytes: int
    description: str


def warm_up_group(
    g: Group,
    sender: Sender,
    data: Data,
    storage_root: Path,
    warm: Path,
    logs: Path,
    skipped: dict[str, str],
    keep: list[Path] | None = None,
) -> None:
    """One untimed pass of the group's data set, with dcmtk if it runs here."""
    names = [n for n in ("dcmtk-fork", *g.receivers) if n in RECEIVERS and n not in skipped]
    if not names or g.sender in skipped:
        return
    with contextlib.suppress(Skip):
        run_once(RECEIVERS[names[0]], sender, data, storage_root, warm, logs, keep)


def run_once(
    receiver: Receiver,
    sender: Sender,
    data: Data,
    storage_root: Path,
    warm: Path,
    logs: Path,
    keep: list[Path] | None = None,
) -> dict[str, Any]:
    """One timed run. What the receiver stored is removed afterwards, or,
    with ``keep``, left until the caller removes the directories it lists."""
    # a name never used before: see spread_directories
    run_dir = storage_root / f"{receiver.name}-{time.time_ns():x}"
    out = run_dir / "store"
    out.mkdir(parents=True)
    summary = run_dir / "summary.json"
    log = logs / f"{receiver.name}.log"
    port = free_port()
    n = len(data.files)
    timeout = 120 + data.dataset_bytes / 5e6
    result: dict[str, Any] = {"ok": False, "error": ""}
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            receiver.argv(port, out, summary),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=ENV,
            start_new_session=True,
            cwd=run_dir,
        )
    usage = None
    try:
        if not wait_port(port, proc):
            if proc.poll() == NOT_IMPLEMENTED:
                raise Skip(_tail(log, 1) or "not implemented in this build")
            result["error"] = f"receiver did not start: {_tail(log)}"
            return result
        with measure.Monitor(proc.pid, receiver.forks) as mon:
            warmed = send_storescu([warm], port, 1, 60, logs / "sender.log")
            stored_warm = wait_count(out, 1, 10)[0] if receiver.stores else 1
            if not warmed.ok or stored_warm != 1:
                result["error"] = f"warm-up failed: {warmed.error} stored {stored_warm}"
                return result
            go = prepare(sender, data.files, port, timeout, logs / "sender.log")
            mon.wait_quiet()
            cpu0, kernel0, vm0 = mon.cpu(), mon.kernel(), mon.vm_events()
            sent = go()
            t_end = sent.t0 + sent.elapsed
            stored, stored_bytes = (
                wait_count(out, n + 1, 30) if receiver.stores else (n + 1, data.dataset_bytes)
            )
            quiet = mon.wait_quiet(limit=120)
            cpu1, kernel1, vm1 = mon.cpu(), mon.kernel(), mon.vm_events()
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        with _watchdog([proc.pid], 60):
            _, usage = _wait4(proc)
        cpu = cpu1 - cpu0
        result.update(
            elapsed_s=sent.elapsed,
            files_per_s=n / sent.elapsed,
            mb_per_s=data.dataset_bytes / sent.elapsed / 1e6,
            cpu_s=cpu,
            cpu_s_per_1000=cpu / n * 1000,
            cpu_s_per_gb=cpu / data.dataset_bytes * 1e9,
            peak_rss_mb=mon.peak_kib / 1024,
            sender_cpu_s=sent.cpu,
            sys_cpu_s=kernel1[0] - kernel0[0],
            minor_faults=kernel1[1] - kernel0[1],
            vm_events={k: vm1[k] - vm0[k] for k in vm1},
            stored=stored - 1,
        )
        errors = []
        if not sent.ok:
            errors.append(sent.error)
        if stored != n + 1:
            errors.append(f"{stored - 1} of {n} files stored")
        elif stored_bytes < data.dataset_bytes:
            errors.append(f"{stored_bytes} bytes stored, fewer than the {data.dataset_bytes} sent")
        if not quiet:
            errors.append("receiver still busy 120 s after the sender finished")
        if receiver.summary:
            try:
                s = json.loads(summary.read_text())
            except (OSError, ValueError):
                errors.append("receiver wrote no summary")
            else:
                result["events"] = s["events"] - 1
                if s["events"] != n + 1:
                    errors.append(f"{s['events'] - 1} events for {n} files")
                elif s.get("last_event") is not None:
                    result["events_lag_s"] = max(0.0, s["last_event"] - t_end)
                    result["events_files_per_s"] = n / max(s["last_event"] - sent.t0, 1e-9)
        result["error"] = "; ".join(errors)
        result["ok"] = not errors
        return result
    finally:
        if proc.poll() is None and usage is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if keep is None:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            keep.append(run_dir)
            evict_from_page_cache(run_dir)


# ---------------------------------------------------------------- plan, aggregation, output


@dataclass
class Group:
    dataset: str
    storage: str
    sender: str
    receivers: list[str]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def plan(args: argparse.Namespace) -> list[Group]:
    groups: list[Group] = []
    if args.smoke:
        every_receiver = [*MAIN_RECEIVERS, *VARIANT_RECEIVERS]
        groups.append(Group("small", "tmpfs", "loadgen", every_receiver))
        groups += [
            Group("small", "tmpfs", s, ["dicom-storescp-py"]) for s in SENDERS if s != "loadgen"
        ]
        groups.append(Group("ct", "disk", "storescu", ["dicom-storescp-cli", "dcmtk-fork"]))
        groups.append(Group("big", "tmpfs", "loadgen", ["dicom-storescp-py", "pynetdicom-chunked"]))
    else:
        for dataset in ("ct", "small", "big"):
            for storage in ("tmpfs", "disk"):
                for sender in SENDERS:
                    if dataset == "big" and SENDERS[sender].associations > 1:
                        continue  # one object: one association
                    receivers = list(BIG_RECEIVERS if dataset == "big" else MAIN_RECEIVERS)
                    if (
                        dataset != "big"
                        and storage == "tmpfs"
                        and sender in ("storescu", "loadgen")
                    ):
                        receivers += VARIANT_RECEIVERS
                    groups.append(Group(dataset, storage, sender, receivers))

    def keep(values: Optional[list[str]], value: str) -> bool:
        return values is None or value in values

    out = []
    for g in groups:
        if not (keep(args.datasets, g.dataset) and keep(args.storage, g.storage)):
            continue
        if not keep(args.senders, g.sender):
            continue
        g.receivers = [r for r in g.receivers if keep(args.receivers, r)]
        if g.dataset == "big" and args.big_frames == 0:
            continue
        if g.receivers:
            out.append(g)
    return out


def round_order(receivers: Sequence[str], rep: int) -> list[str]:
    """The order of round ``rep``: the rows of a Williams design. Over
    ``n`` rounds (``2n`` when ``n`` is odd) every receiver runs first once
    (twice) and right after every other receiver once (twice), so neither
    the first place nor a given predecessor (one that leaves the disk busy,
    or one that stores nothing) favours anybody. Each row is the first one
    shifted by ``rep``; with an odd ``n`` the second ``n`` rows are the
    first ``n`` reversed."""
    n = len(receivers)
    if n == 0:
        return []
    # 0, 1, n-1, 2, n-2, ...: the differences between neighbours are all
    # distinct mod n (n even), which is what spreads the predecessors.
    first = [0] + [(j + 1) // 2 if j % 2 else n - j // 2 for j in range(1, n)]
    period = n if n % 2 == 0 else 2 * n
    r = rep % period
    row = [receivers[(i + r) % n] for i in first]
    return row[::-1] if r >= n else row


METRICS = (
    "files_per_s",
    "mb_per_s",
    "cpu_s_per_1000",
    "cpu_s_per_gb",
    "peak_rss_mb",
    "elapsed_s",
    "cpu_s",
    "sender_cpu_s",
    "events_lag_s",
    "events_files_per_s",
)


def summarise(group: Group) -> list[dict[str, Any]]:
    rows = []
    for name in group.receivers:
        runs = group.runs.get(name, [])
        good = [r for r in runs if r.get("ok")]
        row: dict[str, Any] = {
            "dataset": group.dataset,
            "storage": group.storage,
            "sender": group.sender,
            "receiver": name,
            "family": RECEIVERS[name].family,
            "runs": len(runs),
            "ok_runs": len(good),
            "errors": sorted({r["error"] for r in runs if r.get("error")}),
            "skipped": next((r["skipped"] for r in runs if "skipped" in r), None),
            "raw": runs,
        }
        for m in METRICS:
            values = [r[m] for r in good if r.get(m) is not None]
            row[m] = statistics.median(values) if values else None
        rows.append(row)

    def best(family: str, metric: str, pick: Callable[[list[float]], float]) -> Optional[float]:
        values = [r[metric] for r in rows if r["family"] == family and r[metric] is not None]
        return pick(values) if values else None

    dcmtk_fps = best("dcmtk", "files_per_s", max)
    dcmtk_cpu = best("dcmtk", "cpu_s_per_1000", min)
    pynetdicom_fps = next(
        (r["files_per_s"] for r in rows if r["receiver"] == "pynetdicom" and r["files_per_s"]),
        best("pynetdicom", "files_per_s", max),
    )
    ignore = next((r["files_per_s"] for r in rows if r["receiver"] == "dcmtk-ignore"), None)

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    # The best dcmtk variant's runs, round by round: receivers take turns
    # within a round, so a ratio taken inside each round cancels most of the
    # machine's drift between rounds.
    best_dcmtk = next(
        (r for r in rows if r["family"] == "dcmtk" and r["files_per_s"] == dcmtk_fps), None
    )

    def paired(r: dict[str, Any]) -> Optional[float]:
        if best_dcmtk is None:
            return None
        per_round = [
            a["files_per_s"] / b["files_per_s"]
            for a, b in zip(r["raw"], best_dcmtk["raw"])
            if a.get("ok") and b.get("ok") and a.get("files_per_s") and b.get("files_per_s")
        ]
        return statistics.median(per_round) if per_round else None

    for r in rows:
        ours = r["family"] == "dicom-storescp"
        r["vs_dcmtk_best"] = ratio(r["files_per_s"], dcmtk_fps) if ours else None
        r["vs_dcmtk_paired"] = paired(r) if ours else None
        r["cpu_vs_dcmtk_best"] = ratio(r["cpu_s_per_1000"], dcmtk_cpu) if ours else None
        r["vs_pynetdicom"] = ratio(r["files_per_s"], pynetdicom_fps) if ours else None
        r["vs_ignore"] = (
            ratio(r["files_per_s"], ignore) if r["receiver"] != "dcmtk-ignore" else None
        )
    return rows


COLUMNS: list[tuple[str, str, str, float]] = [
    # (title, row key, format, scale)
    ("files/s", "files_per_s", ".0f", 1),
    ("MB/s", "mb_per_s", ".1f", 1),
    ("CPU-s/1k files", "cpu_s_per_1000", ".3f", 1),
    ("CPU-s/GB", "cpu_s_per_gb", ".2f", 1),
    ("peak RSS MB", "peak_rss_mb", ".1f", 1),
    ("×dcmtk best", "vs_dcmtk_best", ".2f", 1),
    ("×dcmtk paired", "vs_dcmtk_paired", ".2f", 1),
    ("CPU/dcmtk", "cpu_vs_dcmtk_best", ".2f", 1),
    ("×pynetdicom", "vs_pynetdicom", ".1f", 1),
    ("% of ignore", "vs_ignore", ".0f", 100),
]


def _cells(r: dict[str, Any]) -> list[str]:
    cells = [r["receiver"]]
    for _title, key, spec, scale in COLUMNS:
        v = r.get(key)
        if v is not None and key == "files_per_s" and v < 10:
            spec = ".2f"  # the big object
        cells.append("—" if v is None else f"{v * scale:{spec}}")
    note = ""
    if r["skipped"]:
        note = f"skipped: {r['skipped']}"
    elif r["errors"]:
        note = f"FAILED {r['runs'] - r['ok_runs']}/{r['runs']}: {r['errors'][0]}"
    elif r.get("events_lag_s") is not None and r["events_lag_s"] > 0.05:
        note = f"last event {r['events_lag_s']:.2f} s after the last response"
    cells.append(note)
    return cells


def _groups(rows: list[dict[str, Any]]) -> Iterator[tuple[tuple[str, str, str], list[Any]]]:
    key = None
    chunk: list[dict[str, Any]] = []
    for r in rows:
        k = (r["dataset"], r["storage"], r["sender"])
        if k != key and chunk:
            yield key, chunk  # type: ignore[misc]
            chunk = []
        key = k
        chunk.append(r)
    if chunk:
        yield key, chunk  # type: ignore[misc]


def _title(key: tuple[str, str, str], datasets: dict[str, Data]) -> str:
    dataset, storage, sender = key
    return f"{datasets[dataset].description} · {storage} · {SENDERS[sender].description}"


def print_table(rows: list[dict[str, Any]], datasets: dict[str, Data], file: Any) -> None:
    titles = ["receiver", *(c[0] for c in COLUMNS)]
    widths = [24, *(max(len(t), 7) for t in titles[1:])]
    for key, chunk in _groups(rows):
        print(f"\n== {_title(key, datasets)}", file=file)
        print(
            "  ".join(
                t.rjust(w) if i else t.ljust(w) for i, (t, w) in enumerate(zip(titles, widths))
            ),
            file=file,
        )
        for r in chunk:
            cells = _cells(r)
            line = "  ".join(
                c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            print(f"{line}  {cells[-1]}".rstrip(), file=file)


def markdown_table(rows: list[dict[str, Any]], datasets: dict[str, Data]) -> str:
    out = []
    for key, chunk in _groups(rows):
        out.append(f"\n**{_title(key, datasets)}**\n")
        titles = ["receiver", *(c[0] for c in COLUMNS), "note"]
        out.append("| " + " | ".join(titles) + " |")
        out.append("|" + "|".join([" --- "] + [" ---: "] * len(COLUMNS) + [" --- "]) + "|")
        for r in chunk:
            out.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(out).lstrip() + "\n"


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    resolved = str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount = parts[1]
            if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(
                mount
            ) > len(best):
                best, fstype = mount, parts[2]
    return fstype


def _run_text(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def spread_directories(root: Path) -> bool:
    """Mark ``root`` as the top of a directory hierarchy (ext4 ``chattr +T``)
    so that each run's directory (named anew each time: ext4 picks a
    top-level directory's block group from a hash of its name) is placed in
    a block group of its own (the caller also keeps what disk runs store
    until the end of the benchmark).

    When every run deleted what the previous one stored, ext4 without a journal
    (as on this project's test machines) skips inodes freed in the last minute
    or more when it allocates one (``find_inode_bit``/``recently_deleted`` in
    fs/ext4/ialloc.c), checking them one by one: in the block group that held
    the previous run, creating a file then cost 0.3 to 0.7 ms of kernel time
    instead of 0.03 ms, whoever the receiver. A real ingestion node whose files
    are removed soon after they arrive would pay it too; the benchmark measures
    the receivers, not that. Returns whether the mark is set."""
    try:
        done = subprocess.run(
            ["chattr", "+T", str(root)], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: chattr +T {root}: {e}", file=sys.stderr)
        return False
    if done.returncode != 0:
        print(f"warning: chattr +T {root}: {done.stderr.strip()}", file=sys.stderr)
        return False
    return True


def evict_from_page_cache(root: Path) -> int:
    """Write out what a disk run stored and drop it from the page cache
    (``posix_fadvise(DONTNEED)`` on every file under ``root``), so that
    the files kept until the end do not keep their memory either. Returns
    the number of files.

    On a virtual machine, a page the guest has not used for a while (not
    since boot, or given back to the host: this one has a virtio balloon
    with free page reporting) costs a fault in the host the first time it
    is written. With every disk run's files held in the page cache, the
    kernel handed later runs such pages: after about
    3 to 6 GB of kept files, CT runs on disk cost every receiver (dcmtk's
    too) 1.2 to 2.3 ms of system CPU per 0.5 MB object instead of 0.35 to
    0.55 ms, for the rest of the benchmark. With the pages given back after
    each run, every run writes into memory the machine has just used, as a
    node in a steady state does."""
    os.sync()
    count = 0
    for path in root.rglob("*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # a directory we cannot open, a vanished file
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                count += 1
        finally:
            os.close(fd)
    return count


def machine_info(storage: dict[str, Path]) -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("MemTotal")), "")
    versions: dict[str, str] = {"python": platform.python_version()}
    for mod in ("dicom_storescp", "pydicom", "pynetdicom"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            versions[mod] = "not installed"
    versions["dcmtk"] = next(iter(_run_text([STORESCP, "--version"]).splitlines()), "")
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "versions": versions,
        "git_commit": _run_text(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "git_dirty": bool(_run_text(["git", "-C", str(REPO), "status", "--porcelain"])),
        "storage": {k: {"path": str(v), "fs": _fs_type(v)} for k, v in storage.items()},
        "loadavg_start": os.getloadavg(),
    }


def ensure_loadgen() -> Optional[str]:
    """Builds benches/loadgen if needed; returns why it is unavailable, or None."""
    sources = [LOADGEN_MANIFEST, *(BENCH / "loadgen" / "src").glob("*.rs")]
    if LOADGEN.exists() and all(s.stat().st_mtime <= LOADGEN.stat().st_mtime for s in sources):
        return None
    cargo = shutil.which("cargo")
    if cargo is None:
        return "cargo not found: cannot build benches/loadgen"
    print("building benches/loadgen ...", file=sys.stderr)
    done = subprocess.run(
        [cargo, "build", "--release", "--quiet", "--manifest-path", str(LOADGEN_MANIFEST)]
    )
    return None if done.returncode == 0 and LOADGEN.exists() else "cargo build of loadgen failed"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="dicom-storescp benchmark harness (see benches/README.md)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="smaller data (50 CT, 500 small, 64 MiB big), 1 repetition",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="tiny data; every receiver, sender, data set and storage once (< 60 s)",
    )
    p.add_argument("--ct", type=int, help="CT slices, 512×512 16-bit (default 200)")
    p.add_argument("--small", type=int, help="64×64 objects (default 2000)")
    p.add_argument(
        "--big-frames",
        type=int,
        help="frames of 512 KiB in the multi-frame object (default 2048 = 1 GiB; "
        "0 = no big object)",
    )
    p.add_argument("--repeat", type=int, help="timed runs per configuration (default 5)")
    p.add_argument(
        "--first-round",
        type=int,
        default=0,
        help="number the rounds from this one, so that runs meant to be pooled "
        "take further rows of the order design (default 0; e.g. 0, 5, 10)",
    )
    p.add_argument("--datasets", type=_csv, help="subset of ct,small,big")
    p.add_argument("--storage", type=_csv, help="subset of tmpfs,disk")
    p.add_argument("--senders", type=_csv, help=f"subset of {','.join(SENDERS)}")
    p.add_argument("--receivers", type=_csv, help=f"subset of {','.join(RECEIVERS)}")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=BENCH / "out",
        help="generated data (kept between runs), logs, disk storage (default benches/out)",
    )
    p.add_argument(
        "--tmpfs-dir", type=Path, default=Path("/dev/shm"), help="tmpfs root (default /dev/shm)"
    )
    p.add_argument("--disk-dir", type=Path, help="where 'disk' receivers write (default WORK/recv)")
    p.add_argument(
        "--out",
        type=Path,
        default=BENCH / "out" / "results.json",
        help="JSON results (default benches/out/results.json)",
    )
    args = p.parse_args(argv)
    sizes = {
        "ct": (200, 50, 4),
        "small": (2000, 500, 20),
        "big_frames": (2048, 128, 8),
        "repeat": (5, 1, 1),
    }
    for key, (full, quick, smoke) in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else quick if args.quick else full)
    for name, values, known in (
        ("--datasets", args.datasets, ("ct", "small", "big")),
        ("--storage", args.storage, ("tmpfs", "disk")),
        ("--senders", args.senders, SENDERS),
        ("--receivers", args.receivers, RECEIVERS),
    ):
        for v in values or ():
            if v not in known:
                p.error(f"{name}: unknown {v!r} (known: {', '.join(known)})")
    if min(args.ct, args.small, args.repeat) < 1 or args.big_frames < 0:
        p.error("sizes and --repeat must be positive")
    if args.first_round < 0:
        p.error("--first-round must be 0 or more")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for tool in (STORESCU, STORESCP):
        if not os.access(tool, os.X_OK):
            print(f"{tool} not found: install dcmtk (apt-get install dcmtk)", file=sys.stderr)
            return 2
    work: Path = args.work_dir.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    tmpfs_root = Path(tempfile.mkdtemp(prefix="dicom-storescp-bench-", dir=args.tmpfs_dir))
    disk_root = (args.disk_dir or work / "recv").resolve()
    disk_root.mkdir(parents=True, exist_ok=True)
    spread = spread_directories(disk_root)
    storage = {"tmpfs": tmpfs_root, "disk": disk_root}
    info = machine_info(storage)
    info["storage"]["disk"]["spread_directories"] = spread
    info["storage"]["disk"]["evicts_page_cache"] = True
    for kind, expected in (("tmpfs", ("tmpfs",)), ("disk", ("ext4", "xfs", "btrfs"))):
        fs = info["storage"][kind]["fs"]
        if fs not in expected:
            print(f"warning: '{kind}' storage {storage[kind]} is on {fs}", file=sys.stderr)

    groups = plan(args)
    unavailable: dict[str, str] = {}
    if any(SENDERS[g.sender].tool == "loadgen" for g in groups):
        why = ensure_loadgen()
        if why:
            unavailable.update({s: why for s, v in SENDERS.items() if v.tool == "loadgen"})
    try:
        import pynetdicom  # noqa: F401
    except ImportError:
        unavailable.update({r: "pynetdicom not installed" for r in RECEIVERS if "pynetdicom" in r})

    t_gen = time.monotonic()
    data_root = work / "data"
    sizes = {"ct": args.ct, "small": args.small, "big": args.big_frames}
    datasets: dict[str, Data] = {}
    for name in sorted({g.dataset for g in groups}):
        files = datagen.ensure(data_root, name, sizes[name])
        nbytes = sum(datagen.dataset_bytes(f) for f in files)
        each = nbytes / len(files) / 1e6
        desc = {
            "ct": f"{len(files)} × 512×512 CT ({each:.2f} MB)",
            "small": f"{len(files)} × 64×64 ({each * 1000:.0f} kB)",
            "big": f"1 × {sizes['big']}-frame 512×512 object ({nbytes / 1e9:.2f} GB)",
        }[name]
        datasets[name] = Data(name, files, nbytes, desc)
    warm = datagen.make_warm(data_root)
    os.sync()  # no writeback of freshly generated data during the first timed runs
    print(f"data ready in {time.monotonic() - t_gen:.1f} s under {data_root}", file=sys.stderr)

    total = sum(len(g.receivers) for g in groups) * args.repeat
    done = 0
    skipped: dict[str, str] = dict(unavailable)
    t_start = time.monotonic()
    # Files stored on disk stay until the end (see spread_directories), but
    # for the big object's (one inode per run, and a gigabyte each).
    kept: list[Path] = []
    try:
        for g in groups:
            data = datasets[g.dataset]
            sender = SENDERS[g.sender]
            keep = kept if g.storage == "disk" and g.dataset != "big" else None
            warm_up_group(g, sender, data, storage[g.storage], warm, logs, skipped, keep)
            for rep in range(args.repeat):
                for name in round_order(g.receivers, args.first_round + rep):
                    done += 1
                    runs = g.runs.setdefault(name, [])
                    why = skipped.get(name) or skipped.get(g.sender)
                    if why:
                        runs.append({"ok": False, "skipped": why})
                        continue
                    try:
                        r = run_once(
                            RECEIVERS[name], sender, data, storage[g.storage], warm, logs, keep
                        )
                    except Skip as e:
                        skipped[name] = str(e)
                        runs.append({"ok": False, "skipped": str(e)})
                        continue
                    runs.append(r)
                    status = (
                        f"{r['files_per_s']:.0f} files/s, {r['cpu_s_per_1000']:.3f} CPU-s/1k"
                        if r.get("files_per_s")
                        else ""
                    )
                    if not r["ok"]:
                        status += f" FAILED: {r['error']}"
                    print(
                        f"[{done}/{total}] {g.dataset} {g.storage} {g.sender} {name} "
                        f"#{rep + 1}: {status}",
                        file=sys.stderr,
                    )
                    if g.storage == "disk" and keep is None:
                        os.sync()  # a kept run was synced as it was evicted
    finally:
        shutil.rmtree(tmpfs_root, ignore_errors=True)
        for run_dir in kept:
            shutil.rmtree(run_dir, ignore_errors=True)

    rows = [row for g in groups for row in summarise(g)]
    print_table(rows, datasets, sys.stdout)
    info["loadavg_end"] = os.getloadavg()
    report = {
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": info,
        "config": {
            "repeat": args.repeat,
            "first_round": args.first_round,
            "datasets": {
                k: {
                    "files": len(v.files),
                    "dataset_bytes": v.dataset_bytes,
                    "description": v.description,
                }
                for k, v in datasets.items()
            },
            "receivers": {
                k: RECEIVERS[k].description for k in sorted({r["receiver"] for r in rows})
            },
            "senders": {k: SENDERS[k].description for k in sorted({g.sender for g in groups})},
            "storage": {k: str(v) for k, v in storage.items()},
        },
        "duration_s": time.monotonic() - t_start,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(markdown_table(rows, datasets))
    failed = [r for r in rows if r["errors"]]
    print(
        f"\n{len(rows)} rows, {len(failed)} with failures; "
        f"JSON: {args.out}, Markdown: {args.out.with_suffix('.md')}",
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
