"""Logging: records of the Rust core reach Python's ``logging`` on child
loggers of ``dicom_storescp`` per concern; ``verbose=True`` gives INFO lines
for associations and files; by default only warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest
from conftest import HOST, RunningScp, generate_objects, storescu
from dicom_storescp import LOG_CONCERNS, StoreScp


@pytest.fixture(autouse=True)
def clean_loggers() -> Iterator[None]:
    """verbose=True and these tests change logger levels: restore them."""
    names = ["dicom_storescp", *(f"dicom_storescp.{c}" for c in LOG_CONCERNS)]
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.NOTSET)
    yield
    for n, (level, handlers) in saved.items():
        lg = logging.getLogger(n)
        lg.setLevel(level)
        lg.handlers[:] = handlers


def _ours(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("dicom_storescp")]


def test_default_is_silent_except_warnings(
    scp_factory: Callable[..., RunningScp],
    base_dataset_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="unrelated")  # capture without touching ours
    run = scp_factory(allowed_calling_ae_titles=["GOOD"], study_timeout=0.3)
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    storescu(run.port, [o.path for o in objs], aet="GOOD")
    run.log.wait_for("OnStudyCompleted", 1)
    storescu(run.port, [objs[0].path], aet="BAD", check=False)
    run.log.wait_for("OnAssociationRejected", 1)
    run.stop()
    records = _ours(caplog)
    assert [r for r in records if r.levelno < logging.WARNING] == []
    # the refused association is a warning on the association logger
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == ["dicom_storescp.association"], warnings
    assert "rejected" in warnings[0].getMessage()


def test_verbose_logs_associations_files_and_studies_per_concern(
    base_dataset_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out", verbose=True, study_timeout=60)
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    with scp:
        storescu(scp.port, [o.path for o in objs])
    by_logger: dict[str, list[str]] = {}
    for r in _ours(caplog):
        by_logger.setdefault(r.name, []).append(r.getMessage())
    assert any("listening on" in m for m in by_logger["dicom_storescp.server"])
    assert any("server stopped" in m for m in by_logger["dicom_storescp.server"])
    assert any("association accepted" in m for m in by_logger["dicom_storescp.association"])
    assert any("released" in m for m in by_logger["dicom_storescp.association"])
    stored = [m for m in by_logger["dicom_storescp.storage"] if m.startswith("stored ")]
    assert len(stored) == 2
    for o in objs:
        assert any(o.sop_instance_uid in m for m in stored)
    assert any("completed" in m for m in by_logger["dicom_storescp.study"])
    assert all(r.levelno >= logging.INFO for r in _ours(caplog))


def test_logger_levels_choose_what_the_core_forwards(
    base_dataset_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without verbose, INFO on one child logger gives that concern only."""
    logging.getLogger("dicom_storescp.storage").setLevel(logging.INFO)
    scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out")
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    with scp:
        storescu(scp.port, [o.path for o in objs])
    records = _ours(caplog)
    assert {r.name for r in records} == {"dicom_storescp.storage"}, records
    assert len([r for r in records if r.getMessage().startswith("stored ")]) == 2


def test_a_failing_listener_is_logged_and_reception_goes_on(
    scp_factory: Callable[..., RunningScp],
    base_dataset_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = scp_factory()

    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    run.scp.add_event_listener("OnFileStored", broken)
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    storescu(run.port, [o.path for o in objs])
    run.log.wait_for("OnFileStored", 2)
    run.stop()
    errors = [r for r in _ours(caplog) if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.name == "dicom_storescp.events" for r in errors)
    assert all(r.exc_info and "listener bug" in str(r.exc_info[1]) for r in errors)
