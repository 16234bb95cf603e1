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


def test_cli_extraction_grouping_and_study_completion_json(
    tmp_path: Path, corpus: dict[str, Prepared], cli_factory: list[Cli]
) -> None:
    port = free_port()
    cli = Cli(
        [
            *_launcher("console-script"),
            "--port", str(port), "--out-dir", str(tmp_path / "out"), "--json",
            "--extract-tags", "PatientName,00100020,Modality",
            "--extract-custom-tag", "00080070=Vendor",
            "--grouping", "Custom", "--custom-group", "who=PatientName,PatientID",
            "--study-timeout", "0.5",
        ]
    )  # fmt: skip
    cli_factory.append(cli)
    cli.wait_listening(port)
    p = corpus["CT_small.dcm"]
    storescu(port, [p.path], "-R", p.flag)
    seen: dict[str, dict[str, object]] = {}
    deadline = time.monotonic() + 15
    while "OnStudyCompleted" not in seen:
        obj = json.loads(cli.read_line(max(0.1, deadline - time.monotonic())))
        seen[str(obj["event"])] = obj
    stored = seen["OnFileStored"]
    assert stored["tags"] == {
        "who": {"PatientName": "CompressedSamples^CT1", "PatientID": "1CT1"},
        "other": {"Modality": "CT", "Vendor": "GE MEDICAL SYSTEMS"},
    }
    study = seen["OnStudyCompleted"]
    assert study["study_instance_uid"] == p.study_instance_uid
    assert isinstance(study["series"], list)
    (series,) = study["series"]
    (inst,) = series["instances"]
    assert inst["sop_instance_uid"] == p.sop_instance_uid
    assert inst["file"] == stored["file"]
    assert inst["uri"] == stored["uri"]
    assert inst["tags"] == stored["tags"]
    assert cli.interrupt() == 0, "".join(cli.stderr)[-2000:]


def test_cli_plain_study_line_and_flush_on_sigint(
    tmp_path: Path, corpus: dict[str, Prepared], cli_factory: list[Cli]
) -> None:
    """A pending study is reported when the CLI is interrupted."""
    port = free_port()
    cli = Cli(
        [*_launcher("python-m"), "--port", str(port), "--out-dir", str(tmp_path / "out"),
         "--study-timeout", "3600"]
    )  # fmt: skip
    cli_factory.append(cli)
    cli.wait_listening(port)
    p = corpus["MR_small.dcm"]
    storescu(port, [p.path], "-R", "-xe")
    assert "stored" in cli.read_line(15)
    assert cli.interrupt() == 0, "".join(cli.stderr)[-2000:]
    rest = []
    while not cli.lines.empty():
        rest.append(cli.lines.get())
    assert f"study {p.study_instance_uid} completed: 1 series, 1 instance(s)\n" in rest, rest


@pytest.mark.parametrize(
    ("flags", "option"),
    [
        (["--extract-tags", "PatientNam"], "extract_tags"),
        (["--extract-custom-tag", "0009100=X"], "extract_custom_tags"),
        (["--grouping", "Custom"], "custom_groups"),
    ],
)
def test_cli_bad_extraction_options_exit_1(tmp_path: Path, flags: list[str], option: str) -> None:
    proc = subprocess.run(
        [*_launcher("python-m"), "--port", "0", "--out-dir", str(tmp_path), *flags],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert option in proc.stderr


def test_cli_usage_errors_exit_2(tmp_path: Path) -> None:
    for flags in (["--study-timeout", "0"], ["--extract-custom-tag", "nonsense"]):
        proc = subprocess.run(
            [*_launcher("python-m"), "--port", "0", "--out-dir", str(tmp_path), *flags],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 2, (flags, proc.stderr)


def test_cli_periodic_and_final_summaries(
    tmp_path: Path, corpus: dict[str, Prepared], cli_factory: list[Cli]
) -> None:
    port = free_port()
    argv = [*_launcher("python-m"), "--port", str(port), "--out-dir", str(tmp_path / "out")]
    cli = Cli([*argv, "--stats-interval", "0.3"])
    cli_factory.append(cli)
    cli.wait_listening(port)
    files = [corpus[n] for n in ("CT_small.dcm", "MR_small.dcm")]
    storescu(port, [p.path for p in files], "-R", "-xe")
    deadline = time.monotonic() + 15
    while not any("stored 2 " in line for line in cli.stderr):
        assert time.monotonic() < deadline, f"no periodic summary: {''.join(cli.stderr)[-2000:]}"
        time.sleep(0.1)
    periodic = [line for line in cli.stderr if "files/s;" in line]
    assert periodic, cli.stderr
    assert cli.interrupt() == 0
    time.sleep(0.3)  # let the stderr pump read the last line
    final = [line for line in cli.stderr if "final:" in line]
    assert len(final) == 1, cli.stderr
    assert "stored 2 " in final[0] and "failed 0" in final[0]
    assert "associations 0 open / 2 total / 0 rejected" in final[0], final[0]
