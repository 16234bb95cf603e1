"""Storage faults and shutdown under load: the sender always gets the truth
(failure status when the object was not stored), nothing partial remains, and
reception resumes when the fault is gone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from conftest import (
    DCMTK_ENV,
    HOST,
    SCP_AE,
    STORESCU,
    Prepared,
    RunningScp,
    assert_incoming_empty,
    dataset_bytes,
    echoscu,
    free_port,
    generate_objects,
    stored_files,
    storescu,
    wait_until,
)
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.presentation import build_context

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs volumes (needs root, as in CI); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _remount(point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], check=True)


def _big_object(base: Path, dest: Path, size: int) -> Prepared:
    """One object of about `size` bytes (pixel data of the right length)."""
    ds = pydicom.dcmread(base)
    rows = max(16, int((size / 2) ** 0.5))
    ds.Rows = rows
    ds.Columns = rows
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelData = os.urandom(rows * rows * 2)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dest, enforce_file_format=True)
    (obj,) = generate_objects(dest, dest.parent / "one", 1)
    return obj


def _statuses(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return re.findall(r"Received Store Response \(([^)]*)\)", proc.stdout + proc.stderr)


def test_full_filesystem_answers_failure_then_recovers(
    scp_factory: Callable[..., RunningScp],
    mount_tmpfs: Callable[[str], Path],
    base_dataset_file: Path,
    tmp_path: Path,
) -> None:
    volume = mount_tmpfs("3m")
    run = scp_factory(out_dir=str(volume / "store"))
    big = _big_object(base_dataset_file, tmp_path / "big.dcm", 2_000_000)
    filler = volume / "filler"
    filler.write_bytes(b"\0" * 1_500_000)  # leaves ~1.5 MB: too little
    proc = storescu(run.port, [big.path], "-v", "-R", "-xe", check=False)
    assert _statuses(proc) and "Success" not in _statuses(proc)[0], proc.stdout + proc.stderr
    (err,) = run.log.wait_for("OnError", 1)
    assert err["status"] == 0xA700 and err["sop_instance_uid"] == big.sop_instance_uid
    assert not big.expected_path(run.out_dir).exists()
    assert_incoming_empty(run.out_dir)
    # Space returns: the same object is stored, complete.
    filler.unlink()
    storescu(run.port, [big.path], "-R", "-xe")
    (ev,) = run.log.wait_for("OnFileStored", 1)
    assert Path(ev["file"]).read_bytes() == dataset_bytes(big.path)
    assert_incoming_empty(run.out_dir)


def test_read_only_volume_answers_failure_then_recovers(
    scp_factory: Callable[..., RunningScp],
    mount_tmpfs: Callable[[str], Path],
    base_dataset_file: Path,
    tmp_path: Path,
) -> None:
    volume = mount_tmpfs("8m")
    run = scp_factory(out_dir=str(volume / "store"))
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    _remount(volume, "ro")
    try:
        proc = storescu(run.port, [objs[0].path], "-v", "-R", "-xe", check=False)
        assert _statuses(proc) and "Success" not in _statuses(proc)[0], proc.stdout
        (err,) = run.log.wait_for("OnError", 1)
        assert err["status"] == 0xA700
    finally:
        _remount(volume, "rw")
    storescu(run.port, [objs[1].path], "-R", "-xe")
    (ev,) = run.log.wait_for("OnFileStored", 1)
    assert ev["sop_instance_uid"] == objs[1].sop_instance_uid
    assert stored_files(run.out_dir) == {objs[1].expected_path(run.out_dir).resolve()}


def test_vanished_out_dir_is_recreated(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    run = scp_factory()
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    storescu(run.port, [objs[0].path], "-R", "-xe")
    run.log.wait_for("OnFileStored", 1)
    shutil.rmtree(run.out_dir)
    storescu(run.port, [objs[1].path], "-R", "-xe")
    events = run.log.wait_for("OnFileStored", 2)
    assert Path(events[1]["file"]).read_bytes() == dataset_bytes(objs[1].path)


def test_same_sop_instance_concurrently_ends_as_one_complete_file(
    scp: RunningScp, base_dataset_file: Path, tmp_path: Path
) -> None:
    """Two associations send different contents under the same UIDs, many
    times, at once: the final file is always exactly one of them."""
    ds = pydicom.dcmread(base_dataset_file)
    uids = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}
    sop = generate_uid()
    variants = []
    for i in range(2):
        v = pydicom.dcmread(base_dataset_file)
        for k, u in uids.items():
            setattr(v, k, u)
        v.SOPInstanceUID = sop
        v.PatientName = f"VARIANT^{i}"
        v.PixelData = bytes([i]) * len(ds.PixelData)
        variants.append(v)
    target = scp.out_dir / uids["StudyInstanceUID"] / uids["SeriesInstanceUID"] / f"{sop}.dcm"
    from pynetdicom.dsutils import encode

    wire = [encode(v, False, True) for v in variants]
    errors: list[str] = []

    def sender(v: pydicom.Dataset) -> None:
        ae = AE(ae_title="RACER")
        ae.requested_contexts = [build_context(str(v.SOPClassUID), [EXPLICIT])]
        assoc = ae.associate(HOST, scp.port, ae_title=SCP_AE)
        try:
            for _ in range(40):
                status = assoc.send_c_store(v)
                if status.Status != 0:
                    errors.append(f"status {status.Status:#x}")
        finally:
            assoc.release()

    threads = [threading.Thread(target=sender, args=(v,)) for v in variants]
    seen: set[bytes] = set()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if target.exists():
            data = target.read_bytes()
            assert data in wire, "a reader saw a file that is neither complete version"
            seen.add(data)
        time.sleep(0.001)
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in wire
    assert_incoming_empty(scp.out_dir)
    assert len(list(target.parent.iterdir())) == 1


def _acknowledged(text: str) -> set[str]:
    """Files that storescu -v saw answered with Success."""
    done: set[str] = set()
    current = None
    for line in text.splitlines():
        if m := re.search(r"Sending file: (.*)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            done.add(Path(current).name)
            current = None
    return done


def test_stop_under_load_keeps_every_success(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path
) -> None:
    run = scp_factory()
    senders = []
    for i in range(3):
        objs = generate_objects(base_dataset_file, tmp_path / f"s{i}", 150)
        senders.append(
            (
                objs,
                subprocess.Popen(
                    [STORESCU, "-v", "-aec", SCP_AE, "+sd", "-R", "-xe", HOST, str(run.port)]
                    + [str(tmp_path / f"s{i}")],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=DCMTK_ENV,
                ),
            )
        )
    assert wait_until(lambda: len(run.log.get("OnFileStored")) >= 30, timeout=30)
    run.stop()
    succeeded = 0
    for objs, proc in senders:
        out, _ = proc.communicate(timeout=60)
        acked = _acknowledged(out)
        succeeded += len(acked)
        for obj in (o for o in objs if o.name in acked):
            path = obj.expected_path(run.out_dir)
            assert path.is_file(), f"{obj.name} answered Success but is not on disk"
            assert path.read_bytes() == dataset_bytes(obj.path)
    stored = stored_files(run.out_dir)
    assert succeeded >= 30
    # nothing more than what was acknowledged (plus at most one per sender
    # whose response was lost when the association was aborted)
    assert succeeded <= len(stored) <= succeeded + len(senders)
    assert len(run.log.get("OnFileStored")) == len(stored)
    assert_incoming_empty(run.out_dir)


def test_cli_sigterm_under_load(base_dataset_file: Path, tmp_path: Path) -> None:
    port = free_port()
    out_dir = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "dicom_storescp", "--port", str(port), "--host", HOST]
        + ["--out-dir", str(out_dir), "--json", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert wait_until(lambda: echoscu(port).returncode == 0, timeout=20)
        objs = generate_objects(base_dataset_file, tmp_path / "objs", 300)
        sender = subprocess.Popen(
            [STORESCU, "-v", "-aec", SCP_AE, "+sd", "-R", "-xe", HOST, str(port)]
            + [str(tmp_path / "objs")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=DCMTK_ENV,
        )
        assert wait_until(lambda: len(stored_files(out_dir)) >= 20, timeout=30)
        cli.send_signal(signal.SIGTERM)
        stdout, stderr = cli.communicate(timeout=30)
        assert cli.returncode == 0, stderr
        sent_out, _ = sender.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    acked = _acknowledged(sent_out)
    assert len(acked) >= 20
    for obj in (o for o in objs if o.name in acked):
        assert obj.expected_path(out_dir).read_bytes() == dataset_bytes(obj.path)
    printed = {
        Path(json.loads(line)["file"]).resolve()
        for line in stdout.splitlines()
        if '"OnFileStored"' in line
    }
    on_disk = stored_files(out_dir)
    assert printed == on_disk, (
        f"stored but not reported: {on_disk - printed}; reported but not stored: "
        f"{printed - on_disk}\nstderr: {stderr[-3000:]}"
    )
    assert len(on_disk) >= len(acked)
    assert_incoming_empty(out_dir)
