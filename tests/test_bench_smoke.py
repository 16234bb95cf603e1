"""The benchmark harness works end to end on tiny data (speed itself is only
ever measured by `python3 benches/run.py`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benches" / "run.py"),
            "--smoke",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benches" / "pool.py"),
            str(out),
            str(out),
            "--out",
            str(pooled_out),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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
