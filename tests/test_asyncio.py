"""asyncio: ``async with``, ``async for event in scp.events()``, ``await
scp.serve()``, with real senders (dcmtk storescu): the same dicts as the
listeners, backpressure from a slow consumer (nothing lost, the sender is
held back), cancellation, abandoned streams never blocking the server."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    DCMTK_AE,
    DCMTK_ENV,
    HOST,
    SCP_AE,
    STORESCU,
    generate_objects,
    storescu,
)
from dicom_storescp import StoreScp


def _collector(scp: StoreScp) -> tuple[list[Any], threading.Condition]:
    """Listener copies of OnFileStored events."""
    got: list[Any] = []
    cond = threading.Condition()

    def on_stored(event: Any) -> None:
        with cond:
            got.append(event)
            cond.notify_all()

    scp.add_event_listener("OnFileStored", on_stored)
    return got, cond


def _wait_count(got: list[Any], cond: threading.Condition, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with cond:
        while len(got) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"expected {n} events, got {len(got)}"
            cond.wait(left)


def test_async_with_and_events_yield_the_listeners_dicts(
    base_dataset_file: Path, tmp_path: Path
) -> None:
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 5)

    async def main() -> tuple[list[Any], list[Any], list[Any], bool]:
        scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out", study_timeout=60)
        got, _ = _collector(scp)
        async with scp:
            assert scp.running and scp.port
            everything = scp.events()
            stored: list[Any] = []
            sender = asyncio.create_task(
                asyncio.to_thread(storescu, scp.port, [o.path for o in objs])
            )
            async with scp.events("OnFileStored") as stream:
                async for event in stream:
                    stored.append(event)
                    if len(stored) == len(objs):
                        break
            await sender
        # after stop: the stream that was not closed ends, with the pending study
        rest = [event async for event in everything]
        return stored, got, rest, scp.running

    stored, got, rest, running = asyncio.run(main())
    assert not running
    assert [e["sop_instance_uid"] for e in stored] == [o.sop_instance_uid for o in objs]
    # the very same dict objects the listeners got
    assert all(a is b for a, b in zip(stored, got))
    assert all(e["event"] == "OnFileStored" for e in stored)
    names = [e["event"] for e in rest]
    assert names.count("OnFileStored") == len(objs)
    assert names[-1] == "OnStudyCompleted", names  # reported by the stop, before the end
    study = rest[-1]
    assert sum(len(s["instances"]) for s in study["series"]) == len(objs)


def test_a_stream_made_while_stopped_waits_for_the_next_start(
    base_dataset_file: Path, tmp_path: Path
) -> None:
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)

    async def main() -> tuple[list[Any], list[Any]]:
        scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out", study_timeout=60)
        async with scp:
            pass
        stream = scp.events("OnFileStored")
        # stopped: nothing comes, and nothing ends the stream
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(stream.__anext__(), 0.5)
        assert not stream.closed
        async with scp:  # started again (on another port)
            await asyncio.to_thread(storescu, scp.port, [o.path for o in objs])
            got = [await asyncio.wait_for(stream.__anext__(), 30) for _ in objs]
        rest = [event async for event in stream]  # ended by the second stop
        return got, rest

    got, rest = asyncio.run(main())
    assert [e["sop_instance_uid"] for e in got] == [o.sop_instance_uid for o in objs]
    assert rest == []


def test_a_slow_consumer_holds_the_sender_back_and_loses_nothing(
    base_dataset_file: Path, tmp_path: Path
) -> None:
    """A stream of 8 events and a consumer that stops reading: the dispatcher
    waits, the core's bounded queue (4096) fills, and the association stops
    reading objects (the sender is held back) instead of memory growing.
    Once the consumer reads again, every object arrives, none is lost."""
    total = 7000
    obj = generate_objects(base_dataset_file, tmp_path / "objs", 1)[0]

    async def main() -> tuple[int, int, int, int, int]:
        async with StoreScp(
            port=0, host=HOST, out_dir=tmp_path / "out", max_queued_events=8
        ) as scp:
            stream = scp.events("OnFileStored")
            assert stream.maxsize == 8
            sender = subprocess.Popen(
                [STORESCU, "-aet", DCMTK_AE, "-aec", SCP_AE, "--repeat", str(total)]
                + [HOST, str(scp.port), str(obj.path)],
                env=DCMTK_ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            try:
                # Nobody reads the stream: reception must come to a halt.
                stalled_at = -1
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    before = scp.stats()["objects_stored"]
                    await asyncio.sleep(1.0)
                    after = scp.stats()["objects_stored"]
                    if after == before and after > 0:
                        stalled_at = after
                        break
                assert stalled_at > 0, "reception never stalled"
                sender_alive = sender.poll() is None
                queued = stream.qsize()
                # Now consume everything.
                received = 0
                async for _event in stream:
                    received += 1
                    if received == total:
                        break
                code = await asyncio.to_thread(sender.wait, 120)
            finally:
                if sender.poll() is None:
                    sender.kill()
            return stalled_at, int(sender_alive), queued, received, code

    stalled_at, sender_alive, queued, received, code = asyncio.run(main())
    assert sender_alive, "the sender finished although nobody consumed the events"
    # bounded: the core queue (4096) + one dispatcher batch (<= 1024) + the stream
    assert stalled_at <= 4096 + 1024 + 8 + 4, stalled_at
    assert stalled_at < total
    assert queued == 8
    assert received == total
    assert code == 0


def test_serve_runs_until_cancelled_then_stops_cleanly(
    base_dataset_file: Path, tmp_path: Path
) -> None:
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)

    async def main() -> tuple[list[str], bool, bool, int]:
        scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out", study_timeout=300)
        stream = scp.events()
        server = asyncio.create_task(scp.serve())
        names: list[str] = []
        async for event in stream:
            names.append(event["event"])
            if event["event"] == "OnServerStarted":
                port = event["port"]
                await asyncio.to_thread(storescu, port, [o.path for o in objs])
            if names.count("OnFileStored") == len(objs):
                server.cancel()
            # the stream ends when the server has stopped
        cancelled = False
        try:
            await server
        except asyncio.CancelledError:
            cancelled = True
        return names, cancelled, scp.running, port

    names, cancelled, running, port = asyncio.run(main())
    assert cancelled
    assert not running
    assert names[0] == "OnServerStarted"
    assert names.count("OnFileStored") == len(objs)
    # the pending study was reported by the stop the cancellation triggered
    assert names[-1] == "OnStudyCompleted", names
    proc = storescu(port, [objs[0].path], check=False, timeout=30)
    assert proc.returncode != 0, "the port still accepts associations after cancellation"


def test_abandoned_streams_never_block_the_server(base_dataset_file: Path, tmp_path: Path) -> None:
    """Streams of one event that are left by return, cancelled while waiting,
    closed with aclose(), or outlive their event loop: afterwards listeners
    still get every event at once (a stream left open would hold the
    dispatcher at its second event)."""
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 12)
    kept: list[Any] = []
    scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out")
    got, cond = _collector(scp)

    async def main() -> Any:
        async def first_event() -> Any:
            async for event in scp.events(maxsize=1):
                return event  # leaves the unnamed stream: finalized
            return None

        first = asyncio.create_task(first_event())
        await asyncio.sleep(0)  # the stream exists before the server starts

        async def wait_forever() -> None:
            async for _ in scp.events("OnError", maxsize=1):
                pass

        waiting = asyncio.create_task(wait_forever())
        await asyncio.sleep(0)
        closed = scp.events(maxsize=1)
        kept.append(scp.events(maxsize=1))  # outlives the loop
        await scp.astart()
        started = await first
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await closed.aclose()
        assert closed.closed
        assert [e async for e in closed] == []
        return started

    try:
        started = asyncio.run(main())
        assert started["event"] == "OnServerStarted"
        gc.collect()
        storescu(scp.port, [o.path for o in objs], timeout=60)
        _wait_count(got, cond, len(objs), timeout=30)
        # every abandoned stream is gone from the dispatcher's list
        assert scp._subscriptions == []
    finally:
        scp.stop(timeout=10)


def test_stop_on_the_consuming_loop_does_not_hang(tmp_path: Path) -> None:
    """A blocking stop() on the thread of the loop that consumes a stream
    closes that stream (with a warning) instead of waiting for it forever."""

    async def main() -> float:
        scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out")
        await scp.astart()
        stream = scp.events(maxsize=1)
        t = time.monotonic()
        scp.stop(timeout=5)
        assert stream.closed
        assert [e async for e in stream] == []
        return time.monotonic() - t

    assert asyncio.run(main()) < 10


def test_events_needs_a_running_loop(tmp_path: Path) -> None:
    scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out")
    with pytest.raises(RuntimeError):
        scp.events()
    with pytest.raises(ValueError, match="max_queued_events"):
        StoreScp(port=0, out_dir=tmp_path, max_queued_events=0)

    async def bad() -> None:
        scp.events("OnFileSaved")  # type: ignore[call-overload]

    with pytest.raises(ValueError, match="OnFileSaved"):
        asyncio.run(bad())


def test_a_stream_nobody_reads_does_not_hang_stop(
    base_dataset_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream kept open on a live loop (another thread) but never read: stop()
    gives up on it after its timeout instead of waiting for ever."""
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 4)
    scp = StoreScp(port=0, host=HOST, out_dir=tmp_path / "out")
    got, cond = _collector(scp)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def open_stream() -> Any:
        return scp.events("OnFileStored", maxsize=1)

    stream = asyncio.run_coroutine_threadsafe(open_stream(), loop).result(10)
    try:
        scp.start()
        storescu(scp.port, [o.path for o in objs])
        # the stream holds one event; the dispatcher waits with the second
        time.sleep(0.5)
        assert len(got) == 2
        t = time.monotonic()
        scp.stop(timeout=2)
        assert time.monotonic() - t < 15
        assert len(got) == len(objs)  # the listeners still got everything
        assert stream.closed
        assert any("was not read during stop()" in r.getMessage() for r in caplog.records)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
