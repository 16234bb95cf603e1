"""Each file under examples/ (the seed's examples ported to Python) runs
against a real sender: started as a script with its port and directory from
the environment, sent a small study with dcmtk storescu, stopped with Ctrl-C
(exit code 0, the pending study reported where the example prints it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import echoscu, free_port, generate_objects, storescu
from s3server import MotoS3

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# example -> the called AE title it answers to (the seed's)
AE_TITLES = {"basic.py": "MY-SCP", "complete.py": "HOSPITAL-SCP"}
# examples that print every completed study
REPORTS_STUDIES = {"events.py", "complete.py", "asyncio_consumer.py"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


def _run(script: Path, env: dict[str, str], port: int, tmp: Path, files: list[Path]) -> str:
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=tmp,
    )
    try:
        aec = AE_TITLES.get(script.name, "STORE-SCP")
        deadline = time.monotonic() + 30
        while echoscu(port, aec=aec).returncode != 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the example never listened"
            time.sleep(0.2)
        storescu(port, files, aec=aec)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_receives_a_study(
    name: str, tmp_path: Path, base_dataset_file: Path, request: pytest.FixtureRequest
) -> None:
    port = free_port()
    out_dir = tmp_path / "out"
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    env = {**os.environ, "DICOM_PORT": str(port), "DICOM_OUT_DIR": str(out_dir)}
    env.pop("PYTHONUNBUFFERED", None)
    if name == "s3.py":
        moto: MotoS3 = request.getfixturevalue("moto")
        bucket = moto.create_bucket(f"ex-{uuid.uuid4().hex[:12]}")
        env.update(
            DICOM_S3_BUCKET=bucket,
            AWS_ACCESS_KEY_ID=moto.access_key,
            AWS_SECRET_ACCESS_KEY=moto.secret_key,
            AWS_ENDPOINT_URL=moto.endpoint,
        )
    out = _run(EXAMPLES / name, env, port, tmp_path, [o.path for o in objs])

    for o in objs:
        key = f"{o.study_instance_uid}/{o.series_instance_uid}/{o.sop_instance_uid}.dcm"
        if name == "s3.py":
            assert f"s3://{bucket}/{key}" in out, out
            assert moto.keys(bucket)[key] > 0
        else:
            assert str(out_dir / key) in out, out
            assert (out_dir / key).is_file()
    if name in REPORTS_STUDIES:
        # study_timeout is long: the study is reported by the stop on Ctrl-C
        assert f"Study {objs[0].study_instance_uid} completed" in out, out
