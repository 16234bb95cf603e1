"""The `dicom-storescp` command line (and `python -m dicom_storescp`)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DCMTK_AE, Prepared, echoscu, free_port, storescu

LAUNCHERS = {
    "console-script": ["dicom-storescp"],
    "python-m": [sys.executable, "-m", "dicom_storescp"],
}


class Cli:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            # Like a real pipeline reader: output must be flushed per line by the
            # program itself, not by an inherited PYTHONUNBUFFERED.
            env={
                k: v
                for k, v in (os.environ if env is None else env).items()
                if k != "PYTHONUNBUFFERED"
            },
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def wait_listening(self, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.argv} exited {self.proc.returncode}: {''.join(self.stderr)[-2000:]}"
                )
            if echoscu(port).returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError(f"not listening on {port} after {timeout}s")

    def read_line(self, timeout: float) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no output line within {timeout}s (stdout not flushed per line?); "
                f"stderr: {''.join(self.stderr)[-2000:]}"
            ) from None

    def interrupt(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout}s after SIGINT") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def cli_factory() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        cli.kill()


def _launcher(kind: str) -> list[str]:
    argv = list(LAUNCHERS[kind])
    if kind == "console-script":
        exe = shutil.which(argv[0])
        assert exe, "the dicom-storescp console script is not installed on PATH"
        argv[0] = exe
    return argv


@pytest.mark.parametrize("kind", sorted(LAUNCHERS))
def test_cli_json_lines_and_sigint(
    kind: str, tmp_path: Path, corpus: dict[str, Prepared], cli_factory: list[Cli]
) -> None:
    port = free_port()
    out_dir = tmp_path / "out"
    cli = Cli([*_launcher(kind), "--port", str(port), "--out-dir", str(out_dir), "--json"])
    cli_factory.append(cli)
    cli.wait_listening(port)

    files = [corpus[n] for n in ("CT_small.dcm", "MR_small_implicit.dcm", "test-SR.dcm")]
    for p in files:
        storescu(port, [p.path], "-R", p.flag)

    stored: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 15
    while len(stored) < len(files):
        line = cli.read_line(max(0.1, deadline - time.monotonic()))
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"--json printed a line that is not JSON: {line!r}") from None
        assert isinstance(obj, dict) and "event" in obj, line
        if obj["event"] == "OnFileStored":
            stored[str(obj["sop_instance_uid"])] = obj

    for p in files:
        ev = stored[p.sop_instance_uid]
        assert Path(str(ev["file"])).resolve() == p.expected_path(out_dir).resolve()
        assert Path(str(ev["file"])).is_file()
        assert ev["transfer_syntax_uid"] == p.transfer_syntax_uid
        assert ev["calling_ae_title"] == DCMTK_AE
        assert ev["size"] == Path(str(ev["file"])).stat().st_size

    assert cli.interrupt() == 0, "".join(cli.stderr)[-2000:]


def test_cli_plain_lines_and_store_with_file_meta(
    tmp_path: Path, corpus: dict[str, Prepared], cli_factory: list[Cli]
) -> None:
    port = free_port()
    out_dir = tmp_path / "out"
    cli = Cli(
        [
            *_launcher("python-m"),
            "--port", str(port), "--out-dir", str(out_dir),
            "--host", "127.0.0.1", "--ae-title", "CLI-SCP", "--store-with-file-meta",
        ]
    )  # fmt: skip
    cli_factory.append(cli)
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "CLI not listening"
        assert cli.proc.poll() is None, "".join(cli.stderr)[-2000:]
        if echoscu(port, aec="CLI-SCP").returncode == 0:
            break
        time.sleep(0.2)
    p = corpus["MR_small.dcm"]
    storescu(port, [p.path], "-R", "-xe", aec="CLI-SCP")
    want = p.expected_path(out_dir)
    deadline = time.monotonic() + 15
    seen = []
    while True:
        line = cli.read_line(max(0.1, deadline - time.monotonic()))
        seen.append(line)
        if str(want) in line or str(want.resolve()) in line:
            break
    assert want.read_bytes()[128:132] == b"DICM"
    assert cli.interrupt() == 0, "".join(cli.stderr)[-2000:]
