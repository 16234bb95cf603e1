"""Every event of the seed, with the fields it documents, and the shape of
the extracted tags under the default ByScope grouping.

    python examples/events.py           # port 4446, or DICOM_PORT / DICOM_OUT_DIR
"""

import os

from dicom_storescp import FileStoredEvent, ServerStartedEvent, StoreScp, StudyCompletedEvent

receiver = StoreScp(
    port=int(os.environ.get("DICOM_PORT", "4446")),
    out_dir=os.environ.get("DICOM_OUT_DIR", "./dicom-storage"),
    extract_tags=["PatientName", "PatientID", "StudyDate", "Modality", "SeriesDescription"],
    grouping_strategy="ByScope",
    study_timeout=30,
)


@receiver.on("OnServerStarted")
def started(data: ServerStartedEvent) -> None:
    print(f"Server started on port {data['port']}")


@receiver.on("OnFileStored")
def stored(data: FileStoredEvent) -> None:
    print("File:", data["file"])
    print("SOP Instance UID:", data["sop_instance_uid"])
    print("SOP Class UID:", data["sop_class_uid"])
    print("Transfer Syntax:", data["transfer_syntax_uid"])
    print("Study UID:", data["study_instance_uid"])
    print("Series UID:", data["series_instance_uid"])
    print("Extracted tags:", data["tags"])  # {"patient": {...}, "study": {...}, ...}


@receiver.on("OnStudyCompleted")
def completed(study: StudyCompletedEvent) -> None:
    print(f"Study {study['study_instance_uid']} completed")
    print(f"{len(study['series'])} series")
    for series in study["series"]:
        print(f"  Series {series['series_instance_uid']}: {len(series['instances'])} instances")
        for instance in series["instances"]:
            print(f"    {instance['file']}")


receiver.listen()
