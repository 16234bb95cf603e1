"""The built wheel (``maturin build --release``) is abi3 and installs and runs
in a fresh virtual environment: ``--version``, then a real receiver answering
dcmtk's echoscu and storescu. Runs when DICOM_STORESCP_WHEEL names the wheel
(.ci/run builds it once, after ``pip install .``, from the same build cache)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import venv
from pathlib import Path

import pytest
from conftest import echoscu, free_port, generate_objects, storescu

WHEEL = os.environ.get("DICOM_STORESCP_WHEEL")

pytestmark = pytest.mark.skipif(
    not WHEEL, reason="set DICOM_STORESCP_WHEEL to a built wheel (done by .ci/run)"
)


def test_wheel_is_abi3_and_runs_in_a_fresh_venv(tmp_path: Path, base_dataset_file: Path) -> None:
    wheel = Path(str(WHEEL))
    assert wheel.is_file(), wheel
    # one wheel for every CPython >= 3.9
    assert re.fullmatch(r"dicom_storescp-[\w.]+-cp39-abi3-(manylinux|linux)\S*\.whl", wheel.name)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
        check=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run(
        [str(py), "-c", "import dicom_storescp; print(dicom_storescp.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=clean, timeout=60,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(env_dir), where

    from dicom_storescp import __version__

    for argv in ([str(py), "-m", "dicom_storescp"], [str(env_dir / "bin" / "dicom-storescp")]):
        proc = subprocess.run(
            [*argv, "--version"], capture_output=True, text=True, cwd=tmp_path, env=clean,
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"dicom-storescp {__version__}"

    port = free_port()
    out_dir = tmp_path / "out"
    receiver = subprocess.Popen(
        [str(env_dir / "bin" / "dicom-storescp"), "--port", str(port), "--host", "127.0.0.1"]
        + ["--out-dir", str(out_dir), "--stats-interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=clean,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while echoscu(port).returncode != 0:
            assert receiver.poll() is None, receiver.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        obj = generate_objects(base_dataset_file, tmp_path / "objs", 1)[0]
        storescu(port, [obj.path])
        assert obj.expected_path(out_dir).is_file()
        receiver.send_signal(signal.SIGINT)
        out, err = receiver.communicate(timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
    assert receiver.returncode == 0, err
    assert obj.sop_instance_uid in out
