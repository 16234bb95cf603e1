"""The same receiver driven by asyncio: ``async for`` over its events, with
backpressure (a slow consumer slows the senders down; nothing is dropped).
Ctrl-C cancels ``serve()``, which stops gracefully: pending studies are
still reported.

    python examples/asyncio_consumer.py # port 4446, or DICOM_PORT / DICOM_OUT_DIR
"""

import asyncio
import contextlib
import os

from dicom_storescp import Event, EventStream, StoreScp


async def consume(events: EventStream[Event]) -> None:
    async for event in events:  # ends when the server has stopped
        if event["event"] == "OnServerStarted":
            print(f"listening on port {event['port']}", flush=True)
        elif event["event"] == "OnFileStored":
            await asyncio.sleep(0)  # e.g. await a database insert here
            print("File received:", event["file"], flush=True)
        elif event["event"] == "OnStudyCompleted":
            count = sum(len(s["instances"]) for s in event["series"])
            print(f"Study {event['study_instance_uid']} completed: {count} instances")


async def main() -> None:
    receiver = StoreScp(
        port=int(os.environ.get("DICOM_PORT", "4446")),
        out_dir=os.environ.get("DICOM_OUT_DIR", "./dicom-storage"),
        extract_tags=["PatientName", "Modality"],
        max_queued_events=100,
    )
    # created before the server starts: it sees OnServerStarted too
    consumer = asyncio.create_task(consume(receiver.events()))
    try:
        await receiver.serve()  # until cancelled (Ctrl-C), then a graceful stop
    finally:
        await consumer  # the last events, the pending studies among them


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
