"""The package's types catch mistakes in user code: ``mypy --strict`` passes on
tests/typing/example_ok.py and reports exactly the marked lines of
tests/typing/example_errors.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent / "typing"

pytest.importorskip("mypy")


def _mypy(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--cache-dir",
            str(cache),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )


def test_typed_user_code_passes_mypy_strict(tmp_path: Path) -> None:
    proc = _mypy(HERE / "example_ok.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_mistakes_in_user_code_are_type_errors(tmp_path: Path) -> None:
    source = (HERE / "example_errors.py").read_text().splitlines()
    expected = {
        n: m.group(1)
        for n, line in enumerate(source, 1)
        if (m := re.search(r"# E: ([a-z-]+)\s*$", line))
    }
    assert len(expected) >= 10
    proc = _mypy(HERE / "example_errors.py", tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got: dict[int, set[str]] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r".*example_errors\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            got.setdefault(int(m.group(1)), set()).add(m.group(2))
    assert set(got) == set(expected), proc.stdout
    for n, code in expected.items():
        assert code in got[n], f"line {n}: expected [{code}], got {got[n]}\n{proc.stdout}"
