"""Measuring a receiver from outside: CPU time and peak RSS of a process tree.

Linux only, standard library only (no psutil).

A :class:`Monitor` samples the receiver's process tree every 50 ms: the
receiver itself and, for receivers that fork a process per association
(dcmtk ``storescp --fork``), its descendants, found through
``/proc/PID/task/TID/children``.

CPU: the receiver's own process CPU clock (nanoseconds, every thread, exited
ones included) + ``cutime+cstime`` of ``/proc/PID/stat`` (the children it has
reaped) + the own CPU clock of each descendant still in the process table
(zombies included). dcmtk reaps a child as soon as it exits, so that child's
time moves into ``cutime``, which the kernel keeps exactly but shows in 10 ms
ticks: a reading of a forking receiver is up to 10 ms low, a difference of two
readings is within ±10 ms. Non-forking receivers are exact. A measurement is
the difference of two readings taken while the receiver is idle.

Peak RSS: the largest ``VmHWM`` seen in the tree. It is a high-water mark, so
nothing is missed of a process still alive, but a forked child that lives
less than the interval can be. (``wait4``'s ``ru_maxrss`` is no use here: it
keeps the RSS of the harness the receiver was forked from, before ``exec``.)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> Optional[list[str]]:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()


def _children(pid: int) -> Optional[list[int]]:
    """Children of every thread of ``pid`` (zombies included), None if unsupported."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread just exited
            return None  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return out


def _descendants_by_scan(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def descendants(root: int) -> list[int]:
    """Every descendant of ``root`` still in the process table (zombies included)."""
    out: list[int] = []
    todo = [root]
    while todo:
        children = _children(todo.pop())
        if children is None:
            return _descendants_by_scan(root)
        out += children
        todo += children
    return out


def tree(root: int, forks: bool) -> list[int]:
    return [root, *descendants(root)] if forks else [root]


def _process_cpu_clock(pid: int) -> Optional[float]:
    # Linux encodes a process's CPU clock as ~pid << 3 | CPUCLOCK_SCHED (2).
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        return None


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# /proc/vmstat counters recorded per run (allocstall_* are summed)
VM_EVENTS = (
    "compact_stall",
    "compact_migrate_scanned",
    "pgscan_direct",
    "allocstall",
    "pgscan_kswapd",
)


class Monitor:
    """CPU time and peak RSS of a receiver's process tree (see the module doc)."""

    def __init__(self, root: int, forks: bool, interval: float = 0.05) -> None:
        self.root, self.forks, self.interval = root, forks, interval
        self.peak_kib = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def sample(self) -> None:
        with self._lock:
            for pid in tree(self.root, self.forks):
                self.peak_kib = max(self.peak_kib, vm_hwm_kib(pid))

    def cpu(self) -> float:
        """CPU seconds used so far by the receiver and its descendants."""
        total = 0.0
        # The root first: a child reaped meanwhile is missed, never counted twice.
        for pid in tree(self.root, self.forks):
            fields = _stat_fields(pid)
            if fields is None:
                continue
            utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
            own = _process_cpu_clock(pid)
            total += (own if own is not None else (utime + stime) / CLK_TCK) + (
                cutime + cstime
            ) / CLK_TCK
        self.sample()
        return total

    def kernel(self) -> tuple[float, int]:
        """System CPU seconds (10 ms ticks) and minor page faults so far of the
        receiver and its descendants, reaped children included: where a
        receiver's CPU time goes, for the raw records."""
        sys_s, minflt = 0.0, 0
        for pid in tree(self.root, self.forks):
            fields = _stat_fields(pid)
            if fields is None:
                continue
            minflt += int(fields[7]) + int(fields[8])
            sys_s += (int(fields[12]) + int(fields[14])) / CLK_TCK
        return sys_s, minflt

    @staticmethod
    def vm_events() -> dict[str, int]:
        """Machine-wide memory management counters (``/proc/vmstat``): direct
        compaction and direct reclaim (paid by the process that allocates a
        page) and kswapd's reclaim (a kernel thread on the same cores). Their
        change over a run tells a run slowed by the kernel's memory state
        from one slowed by the receiver."""
        out = dict.fromkeys(VM_EVENTS, 0)
        try:
            with open("/proc/vmstat") as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name in out:
                        out[name] = int(value)
                    elif name.startswith("allocstall_"):
                        out["allocstall"] += int(value)
        except OSError:
            pass
        return out

    def wait_quiet(
        self, limit: float = 30.0, window: float = 0.1, threshold: float = 0.002
    ) -> bool:
        """Wait until the tree uses less than ``threshold`` CPU seconds per ``window``
        twice in a row (work queued behind the last response, such as event
        listeners, has finished). False if still busy after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        last = self.cpu()
        calm = 0
        while time.monotonic() < deadline:
            time.sleep(window)
            now = self.cpu()
            calm = calm + 1 if now - last < threshold else 0
            if calm >= 2:
                return True
            last = now
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Monitor:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
