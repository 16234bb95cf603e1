"""The seed's complete example: a hospital receiver accepting CT and MR,
extracting patient, study, series and instance attributes, and reporting
each study once it has been quiet for a minute.

    python examples/complete.py         # port 4446, or DICOM_PORT / DICOM_OUT_DIR
"""

import os

from dicom_storescp import (
    FileStoredEvent,
    ServerStartedEvent,
    StoreScp,
    StudyCompletedEvent,
    get_common_sop_classes,
)

sop_classes = get_common_sop_classes()

receiver = StoreScp(
    # Network
    port=int(os.environ.get("DICOM_PORT", "4446")),
    ae_title="HOSPITAL-SCP",
    max_pdu_length=32768,
    # Storage
    storage_backend="Filesystem",
    out_dir=os.environ.get("DICOM_OUT_DIR", "./dicom-archive"),
    store_with_file_meta=False,
    # Tag extraction
    extract_tags=[
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "StudyDate",
        "StudyDescription",
        "AccessionNumber",
        "Modality",
        "SeriesDescription",
        "SeriesNumber",
        "InstanceNumber",
        "SliceThickness",
    ],
    grouping_strategy="ByScope",
    # SOP classes (only accept CT and MR)
    abstract_syntax_mode="Custom",
    abstract_syntaxes=[*sop_classes["ct"], *sop_classes["mr"]],
    # Transfer syntaxes (accept all)
    transfer_syntax_mode="All",
    # Study completion
    study_timeout=60,
    verbose=True,
)


@receiver.on("OnServerStarted")
def started(data: ServerStartedEvent) -> None:
    print(f"✓ SCP Server listening on port {data['port']}")


@receiver.on("OnFileStored")
def stored(data: FileStoredEvent) -> None:
    tags = data["tags"]
    patient = tags.get("patient", {})
    study = tags.get("study", {})
    print(f"✓ Received: {data['file']}")
    print(f"  Patient: {patient.get('PatientName') if isinstance(patient, dict) else None}")
    print(f"  Study: {study.get('StudyDescription') if isinstance(study, dict) else None}")


@receiver.on("OnStudyCompleted")
def completed(study: StudyCompletedEvent) -> None:
    total_instances = sum(len(s["instances"]) for s in study["series"])
    print(f"✓ Study {study['study_instance_uid']} completed")
    print(f"  {len(study['series'])} series, {total_instances} instances")


receiver.listen()
