"""The benchmark harness works end to end on tiny data (speed itself is only
ever measured by `python3 benches/run.py`, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def test_each_round_starts_one_receiver_further_on() -> None:
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import run  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ROOT / "benches"))
    rounds = [run.rotated(["a", "b", "c"], rep) for rep in range(4)]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert run.rotated([], 2) == []
