"""User code with mistakes that ``mypy --strict`` must report, each on the
line marked ``# E: <error code>`` (tests/test_typing.py checks that exactly
these lines fail)."""

from __future__ import annotations

from dicom_storescp import FileStoredEvent, StoreScp

StoreScp(port=4446, out_dir="x", grouping_strategy="ByStudy")  # E: arg-type
StoreScp(port=4446, out_dir="x", storage_backend="s3")  # E: arg-type
StoreScp(port=4446, out_dir="x", abstract_syntax_mode="Storage")  # E: arg-type
StoreScp(port=4446, out_dir="x", transfer_syntax_mode="Compressed")  # E: arg-type
StoreScp(port="4446", out_dir="x")  # E: arg-type
StoreScp(port=4446, out_dir="x", study_timeout="30")  # E: arg-type
StoreScp(port=4446, out_dir="x", extract_custom_tags=[{"tag": "00091001"}])  # E: typeddict-item

scp = StoreScp(port=4446, out_dir="x")
scp.add_event_listener("OnFileSaved", print)  # E: call-overload
scp.add_event_listener("OnFileStored", lambda e: e["filename"])  # E: call-overload


def on_study(event: FileStoredEvent) -> None:
    print(event["study_instance_uid"])


scp.add_event_listener("OnStudyCompleted", on_study)  # E: call-overload
size: str = scp.stats()["bytes_stored"]  # E: assignment


async def consume() -> None:
    async for event in scp.events("OnError"):
        print(event["sop_class_uid"])  # E: typeddict-item
    async for any_event in scp.events():
        print(any_event["file"])  # E: typeddict-item
