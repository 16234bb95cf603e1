"""User code that must type-check under ``mypy --strict`` (tests/test_typing.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dicom_storescp import (
    AbstractSyntaxMode,
    Event,
    FileStoredEvent,
    StoreScp,
    StudyCompletedEvent,
    get_common_sop_classes,
)

sop = get_common_sop_classes()
mode: AbstractSyntaxMode = "Custom"
classes: Sequence[str] = [*sop["ct"], *sop["mr"]]

scp = StoreScp(
    port=4446,
    ae_title="MY-SCP",
    out_dir="./dicom-storage",
    extract_tags=["PatientName", "Modality"],
    extract_custom_tags=[{"tag": "00091001", "name": "CustomField"}],
    grouping_strategy="ByScope",
    abstract_syntax_mode=mode,
    abstract_syntaxes=classes,
    transfer_syntax_mode="UncompressedOnly",
    storage_backend="Filesystem",
    study_timeout=60,
    max_queued_events=100,
)


def on_stored(event: FileStoredEvent) -> None:
    size: int = event["size"]
    path: str = event["file"]
    print(path, size, event["tags"].get("patient"))


scp.add_event_listener("OnFileStored", on_stored)
scp.add_event_listener("OnError", lambda e: print(e["message"], e["status"]))
scp.add_event_listener("OnServerStarted", lambda e: print(e["port"] + 1))


@scp.on("OnStudyCompleted")
def on_study(study: StudyCompletedEvent) -> None:
    count = sum(len(s["instances"]) for s in study["series"])
    print(study["study_instance_uid"], count)


def describe(event: Event) -> str:
    # the "event" key narrows the union
    if event["event"] == "OnFileStored":
        return event["sop_instance_uid"]
    if event["event"] == "OnAssociationRejected":
        return event["reason"]
    return event["event"]


async def main() -> None:
    async with StoreScp(port=0, out_dir="./in") as receiver:
        async for stored in receiver.events("OnFileStored"):
            print(stored["file"].upper())
            break
        async with receiver.events() as stream:
            async for event in stream:
                print(describe(event))
        stats = receiver.stats()
        print(stats["objects_stored"] + stats["bytes_stored"])
    server = StoreScp(port=0, out_dir="./in")
    task = asyncio.create_task(server.serve())
    task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
