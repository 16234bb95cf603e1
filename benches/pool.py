#!/usr/bin/env python3
"""Pool several runs of run.py into one table: every row's medians over all
their raw runs, and the paired ratio over all their rounds.

    python3 benches/pool.py a.json b.json --out benches/out/pooled.json

On a shared virtual machine a full run's medians of 5 move by 10 to 20%
from one run to the next (README.md, Performance); pooling runs made at the
same commit gives each row more rounds. The runs must have the same
configuration (data sets, rows, repetitions: it refuses others); a round is
one repetition of one run, so a paired ratio never compares runs from
different files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import run


def pool(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the pooled reports, summarised as run.py summarises one."""
    groups: dict[tuple[str, str, str], run.Group] = {}
    for report in reports:
        for row in report["results"]:
            key = (row["dataset"], row["storage"], row["sender"])
            group = groups.setdefault(key, run.Group(*key, receivers=[]))
            if row["receiver"] not in group.receivers:
                group.receivers.append(row["receiver"])
            group.runs.setdefault(row["receiver"], []).extend(row["raw"])
    return [row for g in groups.values() for row in run.summarise(g)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="pool several run.py results (see the docstring)")
    p.add_argument("reports", nargs="+", type=Path, help="JSON files written by run.py")
    p.add_argument("--out", type=Path, help="pooled JSON (and .md beside it)")
    args = p.parse_args(argv)
    reports = [json.loads(path.read_text()) for path in args.reports]
    configs = {json.dumps(r["config"]["datasets"], sort_keys=True) for r in reports}
    if len(configs) != 1:
        p.error("the runs used different data sets")
    # Rounds line up only if every run has the same rows with as many runs each.
    shapes = {
        json.dumps(
            [
                (r["dataset"], r["storage"], r["sender"], r["receiver"], r["runs"])
                for r in rep["results"]
            ]
        )
        for rep in reports
    }
    if len(shapes) != 1:
        p.error("the runs differ in their rows or repetitions")
    rows = pool(reports)
    datasets = {
        name: run.Data(name, [], d["dataset_bytes"], d["description"])
        for name, d in reports[0]["config"]["datasets"].items()
    }
    run.print_table(rows, datasets, sys.stdout)
    if args.out:
        report = {
            "command": " ".join(["pool.py", *map(str, args.reports)]),
            "pooled": [
                {"command": r["command"], "commit": r["machine"].get("git_commit")} for r in reports
            ],
            "machine": reports[-1]["machine"],
            "config": reports[-1]["config"],
            "results": rows,
        }
        args.out.write_text(json.dumps(report, indent=1))
        args.out.with_suffix(".md").write_text(run.markdown_table(rows, datasets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
