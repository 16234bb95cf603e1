"""The benchmark harness works end to end on tiny data (speed itself is only
ever measured by `python3 benches/run.py`, never asserted here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from conftest import Prepared, RunningScp, dataset_bytes
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
LOADGEN_MANIFEST = ROOT / "benches" / "loadgen" / "Cargo.toml"
# Transfer syntaxes whose files the load generator can send as they are.
_NATIVE = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
}


def _bench(script: str, *args: str, timeout: float) -> None:
    """Run a script of benches/ and require exit status 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benches" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_benchmark_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    work = str(tmp_path / "work")
    _bench("run.py", "--smoke", "--work-dir", work, "--out", str(out), timeout=600)
    results = json.loads(out.read_text())
    assert results, "no results written"
    text = json.dumps(results)
    for receiver in ("dicom-storescp-py", "dcmtk-fork", "pynetdicom"):
        assert receiver in text, f"{receiver} missing from the benchmark results"
    # every row of ours that ran carries both ratios against dcmtk, and they
    # agree when each receiver ran once (one round: the same runs)
    ours = [
        r
        for r in results["results"]
        if r["family"] == "dicom-storescp" and r["vs_dcmtk_best"] is not None
    ]
    assert ours, "no dicom-storescp row with a dcmtk ratio"
    for r in ours:
        assert r["vs_dcmtk_paired"] is not None, r["receiver"]
        if r["ok_runs"] == 1:
            assert abs(r["vs_dcmtk_paired"] - r["vs_dcmtk_best"]) < 1e-9, r
    # every raw run says whether the kernel's memory state got in its way
    raw = [x for r in results["results"] for x in r["raw"] if x.get("ok")]
    assert raw and all(set(x["vm_events"]) >= {"compact_stall", "pgscan_direct"} for x in raw)

    # pooling the run with itself: every row twice the runs, the same medians
    pooled_out = tmp_path / "pooled.json"
    _bench("pool.py", str(out), str(out), "--out", str(pooled_out), timeout=60)
    pooled = json.loads(pooled_out.read_text())["results"]
    assert len(pooled) == len(results["results"])
    for a, b in zip(results["results"], pooled):
        assert (a["dataset"], a["storage"], a["sender"], a["receiver"]) == (
            b["dataset"],
            b["storage"],
            b["sender"],
            b["receiver"],
        )
        assert b["runs"] == 2 * a["runs"]
        assert b["files_per_s"] == a["files_per_s"]
        assert b["vs_dcmtk_paired"] == a["vs_dcmtk_paired"]
    assert pooled_out.with_suffix(".md").read_text().count("| dicom-storescp-py |") >= 1


@pytest.mark.parametrize("n", [2, 3, 4, 6, 9])
def test_rounds_give_every_receiver_each_place_and_each_predecessor(n: int) -> None:
    """Over a whole design every receiver runs first equally often and right
    after every other receiver equally often (a fixed order rotated by one
    each round would give each receiver the same predecessor every time)."""
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "benches"))
    receivers = [f"r{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    rounds = [run.round_order(receivers, rep) for rep in range(period)]
    assert all(sorted(r) == receivers for r in rounds)
    firsts = Counter(r[0] for r in rounds)
    assert firsts == Counter({name: period // n for name in receivers})
    follows = Counter(pair for r in rounds for pair in zip(r, r[1:]))
    assert len(follows) == n * (n - 1)
    assert set(follows.values()) == {period // n}
    assert run.round_order(receivers, period) == rounds[0]
    assert run.round_order([], 2) == []


def test_loadgen_streams_large_data_sets_byte_for_byte(
    corpus: dict[str, Prepared], scp_factory: Callable[..., RunningScp], tmp_path: Path
) -> None:
    """The load generator sends a data set above --stream-above from its file
    (as it does the benchmark's 1 GB object) and the receiver stores exactly
    the file's data set; with --stream-above 0 every object goes that way."""
    if shutil.which("cargo") is None:
        pytest.skip("cargo is needed to build benches/loadgen")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--manifest-path", str(LOADGEN_MANIFEST)],
        check=True,
        timeout=600,
    )
    loadgen = LOADGEN_MANIFEST.parent / "target" / "release" / "loadgen"
    # Native transfer syntaxes only: the load generator sends a file's data
    # set as it is, and a deflated one of odd length would need padding.
    files = [p for p in corpus.values() if p.transfer_syntax_uid in _NATIVE]
    assert len(files) >= 3, [p.name for p in corpus.values()]
    # One data set of several 1 MiB writes, its last fragment in the last one.
    ds = pydicom.dcmread(files[0].path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.private_block(0x0009, "DICOM-STORESCP TEST", create=True).add_new(
        0x01, "OB", os.urandom(3 * 1024 * 1024 + 2)
    )
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    files.append(Prepared.from_dataset(ds, big))
    scp = scp_factory()
    proc = subprocess.run(
        [str(loadgen), "--port", str(scp.port), "--stream-above", "0", "--timeout", "60"]
        + [str(p.path) for p in files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["ok"] and report["sent"] == len(files), report
    scp.log.wait_for("OnFileStored", len(files))
    for p in files:
        stored = p.expected_path(scp.out_dir)
        assert stored.read_bytes() == dataset_bytes(p.path), p.name
