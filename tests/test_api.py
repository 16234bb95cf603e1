"""The Python API: lifecycle, options, independence of instances."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import (
    DCMTK_AE,
    HOST,
    EventLog,
    Prepared,
    RunningScp,
    assert_file_stored,
    dcmtk_wire_bytes,
    echoscu,
    stored_files,
    storescu,
    wait_until,
)
from dicom_storescp import StoreScp


def _refuses(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return False
    except OSError:
        return True


def test_port_zero_and_server_started_event(scp_factory: Callable[..., RunningScp]) -> None:
    run = scp_factory(ae_title="API-TEST")
    assert isinstance(run.scp.port, int) and 0 < run.port < 65536
    with socket.create_connection((HOST, run.port), timeout=5):
        pass
    (started,) = run.log.wait_for("OnServerStarted", 1, timeout=10)
    assert started["port"] == run.port
    assert started["ae_title"] == "API-TEST"
    assert started["host"] == HOST
    assert echoscu(run.port, aec="API-TEST").returncode == 0


def test_stop_closes_the_port(scp: RunningScp) -> None:
    port = scp.port
    assert echoscu(port).returncode == 0
    scp.stop()
    assert wait_until(lambda: _refuses(port), timeout=5), "port still accepts after stop()"


def test_two_instances_are_independent(
    scp_factory: Callable[..., RunningScp], corpus: dict[str, Prepared]
) -> None:
    a = scp_factory(ae_title="SCP-A")
    b = scp_factory(ae_title="SCP-B")
    assert a.port != b.port
    pa, pb = corpus["CT_small.dcm"], corpus["MR_small.dcm"]
    storescu(a.port, [pa.path], "-R", "-xe", aec="SCP-A")
    storescu(b.port, [pb.path], "-R", "-xe", aec="SCP-B")
    (ea,) = a.log.wait_for("OnFileStored", 1)
    (eb,) = b.log.wait_for("OnFileStored", 1)
    assert_file_stored(ea, pa, a.out_dir, dcmtk_wire_bytes(pa), calling_ae=DCMTK_AE)
    assert_file_stored(eb, pb, b.out_dir, dcmtk_wire_bytes(pb), calling_ae=DCMTK_AE)
    a.stop()
    # b keeps running after a stopped
    assert echoscu(b.port, aec="SCP-B").returncode == 0
    b.stop()
    assert len(a.log.get("OnFileStored")) == 1
    assert len(b.log.get("OnFileStored")) == 1
    assert a.log.get("OnServerStarted")[0]["port"] == a.port
    assert b.log.get("OnServerStarted")[0]["port"] == b.port
    assert len(a.log.get("OnServerStarted")) == 1
    assert len(b.log.get("OnServerStarted")) == 1
    assert stored_files(a.out_dir) == {pa.expected_path(a.out_dir).resolve()}
    assert stored_files(b.out_dir) == {pb.expected_path(b.out_dir).resolve()}


def test_context_manager(tmp_path: Path, corpus: dict[str, Prepared]) -> None:
    log = EventLog()
    scp = StoreScp(port=0, out_dir=str(tmp_path / "out"), host=HOST)
    scp.add_event_listener("OnFileStored", log.listener("OnFileStored"))
    with scp as entered:
        assert entered is scp
        port = scp.port
        assert port > 0
        storescu(port, [corpus["CT_small.dcm"].path], "-R", "-xe")
    # leaving the block stops the server after delivering every event
    assert len(log.get("OnFileStored")) == 1
    assert wait_until(lambda: _refuses(port), timeout=5)


def test_context_manager_stops_on_exception(tmp_path: Path) -> None:
    scp = StoreScp(port=0, out_dir=str(tmp_path / "out"), host=HOST)
    port = 0
    with pytest.raises(KeyError), scp:
        port = scp.port
        raise KeyError("boom")
    assert wait_until(lambda: _refuses(port), timeout=5)


def test_listen_blocks_until_stop_from_another_thread(
    tmp_path: Path, corpus: dict[str, Prepared]
) -> None:
    log = EventLog()
    scp = StoreScp(port=0, out_dir=str(tmp_path / "out"), host=HOST)
    for name in ("OnServerStarted", "OnFileStored"):
        scp.add_event_listener(name, log.listener(name))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            scp.listen()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        (started,) = log.wait_for("OnServerStarted", 1, timeout=10)
        port = started["port"]
        assert port > 0 and scp.port == port
        storescu(port, [corpus["MR_small.dcm"].path], "-R", "-xe")
        log.wait_for("OnFileStored", 1)
        assert thread.is_alive(), f"listen() returned early: {errors}"
    finally:
        scp.stop()
    thread.join(10)
    assert not thread.is_alive(), "listen() did not return after stop()"
    assert errors == []
    assert wait_until(lambda: _refuses(port), timeout=5)


def test_remove_event_listener(scp: RunningScp, corpus: dict[str, Prepared]) -> None:
    removed: list[Any] = []
    kept: list[Any] = []

    def removed_listener(event: dict[str, Any]) -> None:
        removed.append(event)

    def kept_listener(event: dict[str, Any]) -> None:
        kept.append(event)

    scp.scp.add_event_listener("OnFileStored", removed_listener)
    scp.scp.add_event_listener("OnFileStored", kept_listener)
    scp.scp.remove_event_listener("OnFileStored", removed_listener)
    storescu(scp.port, [corpus["CT_small.dcm"].path], "-R", "-xe")
    scp.log.wait_for("OnFileStored", 1)
    scp.stop()
    assert removed == []
    assert len(kept) == 1


def _construct_and_start(**kwargs: Any) -> None:
    """Construct and start; if that unexpectedly works, stop again."""
    scp = StoreScp(**kwargs)
    scp.start()
    scp.stop()


@pytest.mark.parametrize(
    ("overrides", "option"),
    [
        ({"port": 70000}, r"port"),
        ({"port": -1}, r"port"),
        ({"ae_title": ""}, r"ae[_ ]?title"),
        ({"ae_title": "A" * 17}, r"ae[_ ]?title"),
    ],
    ids=["port-70000", "port-negative", "ae-empty", "ae-17-chars"],
)
def test_bad_values_raise_value_error(
    tmp_path: Path, overrides: dict[str, Any], option: str
) -> None:
    kwargs: dict[str, Any] = {"port": 0, "out_dir": str(tmp_path / "out"), "host": HOST}
    kwargs.update(overrides)
    with pytest.raises(ValueError) as info:
        _construct_and_start(**kwargs)
    assert re.search(option, str(info.value), re.IGNORECASE), (
        f"ValueError message does not name the option: {info.value}"
    )


def test_unknown_keyword_rejected(tmp_path: Path) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        _construct_and_start(port=0, out_dir=str(tmp_path), host=HOST, no_such_option=1)
    assert "no_such_option" in str(info.value)


def test_s3_backend_without_bucket(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"s3_config.*bucket|bucket.*s3_config"):
        _construct_and_start(port=0, out_dir=str(tmp_path), host=HOST, storage_backend="S3")


def test_out_dir_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises((OSError, ValueError)):
        _construct_and_start(port=0, out_dir=str(blocker / "sub"), host=HOST)


def test_port_in_use(scp: RunningScp, tmp_path: Path) -> None:
    with pytest.raises((OSError, ValueError)):
        _construct_and_start(port=scp.port, out_dir=str(tmp_path / "x"), host=HOST)
    # the first server is unharmed
    assert echoscu(scp.port).returncode == 0


def test_stop_twice_is_harmless(scp: RunningScp) -> None:
    scp.scp.stop()
    scp.scp.stop()
    scp.stopped = True
