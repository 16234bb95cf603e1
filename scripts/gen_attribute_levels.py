"""Generate src/attribute_levels.rs and docs/attribute-levels.md: the level of
the DICOM information model (patient, study, series) that standard attributes
belong to. Every attribute not listed is instance level.

The levels follow the Information Entities of PS3.3: each Composite IOD table
assigns its modules to an IE (Patient, Study, Series, Equipment, Frame of
Reference, Image/instance...). The module contents below are transcribed from
the PS3.3 module tables (top-level attributes only: nested ones never reach
the receiver's header reader), completed with the Patient/Study/Series key
attributes of the Query/Retrieve information model (PS3.4 C.6.1.1) and the
patient-, visit- and request-level modules of PS3.3 Annex C.2/C.4. Rules:

- Patient IE modules -> "patient"; Study IE modules (and the visit and request
  attributes that describe why a study was made) -> "study";
- Series IE modules, Equipment IE and Frame of Reference IE -> "series"
  (in the Q/R model equipment and frame of reference hang under a series);
- an attribute listed in several levels takes the highest one (patient >
  study > series): e.g. Modality is series level although some instance
  modules repeat it;
- everything else, private tags and custom tags -> "instance".

Keywords and tags come from pydicom's copy of the PS3.6 data dictionary; the
script fails on a keyword that the dictionary does not know, so the table
cannot silently drift. Re-run after upgrading pydicom:
    python scripts/gen_attribute_levels.py
"""

from __future__ import annotations

from pathlib import Path

from pydicom.datadict import DicomDictionary, keyword_dict

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "attribute_levels.rs"
DOC = ROOT / "docs" / "attribute-levels.md"

# ---------------------------------------------------------------------------
# Patient IE
# ---------------------------------------------------------------------------
PATIENT: dict[str, list[str]] = {
    "Patient (C.7.1.1)": [
        "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
        "TypeOfPatientID", "PatientBirthDate", "PatientBirthTime",
        "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
        "PatientAlternativeCalendar", "PatientSex", "QualityControlSubject",
        "StrainDescription", "StrainNomenclature", "StrainStockSequence",
        "StrainAdditionalInformation", "StrainCodeSequence", "GeneticModificationsSequence",
        "OtherPatientNames", "OtherPatientIDs", "OtherPatientIDsSequence",
        "ReferencedPatientPhotoSequence", "EthnicGroup", "EthnicGroupCodeSequence",
        "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
        "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson",
        "ResponsiblePersonRole", "ResponsibleOrganization", "PatientComments",
        "PatientIdentityRemoved", "DeidentificationMethod",
        "DeidentificationMethodCodeSequence", "SourcePatientGroupIdentificationSequence",
        "GroupOfPatientsIdentificationSequence", "ReferencedPatientSequence",
    ],
    "Clinical Trial Subject (C.7.1.3)": [
        "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "IssuerOfClinicalTrialProtocolID",
        "OtherClinicalTrialProtocolIDsSequence", "ClinicalTrialProtocolName",
        "ClinicalTrialSiteID", "IssuerOfClinicalTrialSiteID", "ClinicalTrialSiteName",
        "ClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID", "IssuerOfClinicalTrialSubjectReadingID",
        "ClinicalTrialProtocolEthicsCommitteeName",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        "EthicsCommitteeApprovalEffectivenessStartDate",
        "EthicsCommitteeApprovalEffectivenessEndDate",
    ],
    "Patient Identification / Demographic / Relationship (C.2.2-C.2.4)": [
        "PatientBirthName", "PatientMotherBirthName", "MedicalRecordLocator", "PatientAddress",
        "CountryOfResidence", "RegionOfResidence", "PatientTelephoneNumbers",
        "PatientTelecomInformation", "MilitaryRank", "BranchOfService",
        "PatientReligiousPreference", "PatientInsurancePlanCodeSequence",
        "PatientPrimaryLanguageCodeSequence", "PatientPrimaryLanguageModifierCodeSequence",
        "ConfidentialityConstraintOnPatientDataDescription", "SpecialNeeds",
        "PertinentDocumentsSequence", "PatientClinicalTrialParticipationSequence",
        "ReferencedVisitSequence", "ReferencedPatientAliasSequence",
    ],
    "Q/R patient level (PS3.4 C.6.1.1.2)": [
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ],
}

# ---------------------------------------------------------------------------
# Study IE
# ---------------------------------------------------------------------------
STUDY: dict[str, list[str]] = {
    "General Study (C.7.2.1)": [
        "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
        "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
        "ConsultingPhysicianIdentificationSequence", "StudyID", "AccessionNumber",
        "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence", "RequestingServiceCodeSequence",
        "ReferencedStudySequence", "ProcedureCodeSequence",
        "ReasonForPerformedProcedureCodeSequence",
    ],
    "Patient Study (C.7.2.2)": [
        "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge",
        "PatientSize", "PatientWeight", "PatientBodyMassIndex", "MeasuredAPDimension",
        "MeasuredLateralDimension", "PatientSizeCodeSequence", "MedicalAlerts", "Allergies",
        "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "PatientState", "Occupation",
        "AdditionalPatientHistory", "AdmissionID", "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID", "IssuerOfServiceEpisodeIDSequence", "ServiceEpisodeDescription",
        "PatientSexNeutered", "ReasonForVisit", "ReasonForVisitCodeSequence",
        "CalciumScoringMassFactorPatient",
    ],
    "Clinical Trial Study (C.7.2.3)": [
        "ClinicalTrialTimePointID", "ClinicalTrialTimePointDescription",
        "ClinicalTrialTimePointTypeCodeSequence", "LongitudinalTemporalOffsetFromEvent",
        "LongitudinalTemporalEventType", "ConsentForClinicalTrialUseSequence",
    ],
    "Visit Identification / Admission / Status (C.3)": [
        "InstitutionCodeSequence", "AdmittingDate", "AdmittingTime", "RouteOfAdmissions",
        "DischargeDate", "DischargeTime", "DischargeDiagnosisDescription",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
        "CurrentPatientLocation", "PatientInstitutionResidence", "VisitStatusID",
        "VisitComments", "ScheduledAdmissionDate", "ScheduledAdmissionTime",
        "ScheduledDischargeDate", "ScheduledDischargeTime", "ScheduledPatientInstitutionResidence",
    ],
    "Imaging Service Request / Requested Procedure (C.4.10, C.4.11)": [
        "RequestedProcedureID", "RequestedProcedureDescription",
        "RequestedProcedureCodeSequence", "RequestedProcedurePriority",
        "RequestedProcedureComments", "RequestedProcedureLocation", "ReasonForTheRequestedProcedure",
        "ReasonForRequestedProcedureCodeSequence", "RequestingPhysician",
        "RequestingPhysicianIdentificationSequence", "RequestingService",
        "ImagingServiceRequestComments", "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest", "OrderPlacerIdentifierSequence",
        "OrderFillerIdentifierSequence", "IssueDateOfImagingServiceRequest",
        "IssueTimeOfImagingServiceRequest", "OrderEnteredBy", "OrderEntererLocation",
        "OrderCallbackPhoneNumber", "OrderCallbackTelecomInformation",
        "PatientTransportArrangements", "ConfidentialityCode", "NamesOfIntendedRecipientsOfResults",
    ],
    "Study management (retired, C.4 of earlier editions)": [
        "StudyStatusID", "StudyPriorityID", "StudyIDIssuer", "StudyVerifiedDate",
        "StudyVerifiedTime", "StudyReadDate", "StudyReadTime", "ScheduledStudyStartDate",
        "ScheduledStudyStartTime", "ScheduledStudyStopDate", "ScheduledStudyStopTime",
        "ScheduledStudyLocation", "ScheduledStudyLocationAETitle", "ReasonForStudy",
        "RequestingPhysician", "StudyArrivalDate", "StudyArrivalTime", "StudyCompletionDate",
        "StudyCompletionTime", "StudyComponentStatusID", "StudyComments", "OtherStudyNumbers",
        "InterpretationAuthor",
    ],
    "Q/R study level (PS3.4 C.6.1.1.3)": [
        "ModalitiesInStudy", "SOPClassesInStudy", "AnatomicRegionsInStudyCodeSequence",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
    ],
}

# ---------------------------------------------------------------------------
# Series IE (with Equipment and Frame of Reference)
# ---------------------------------------------------------------------------
SERIES: dict[str, list[str]] = {
    "General Series (C.7.3.1)": [
        "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate",
        "SeriesTime", "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence",
        "ProtocolName", "SeriesDescription", "SeriesDescriptionCodeSequence", "OperatorsName",
        "OperatorIdentificationSequence", "ReferencedPerformedProcedureStepSequence",
        "RelatedSeriesSequence", "BodyPartExamined", "PatientPosition",
        "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "RequestAttributesSequence",
        "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime", "PerformedProcedureStepDescription",
        "PerformedProtocolCodeSequence", "CommentsOnThePerformedProcedureStep",
        "AnatomicalOrientationType", "TreatmentSessionUID", "ReferencedDefinedProtocolSequence",
        "ReferencedPerformedProtocolSequence", "PerformedStationName",
        "PerformedStationAETitle", "PerformedLocation", "PerformedProcedureStepStatus",
        "PerformedProcedureTypeDescription", "PerformedStationNameCodeSequence",
        "PerformedStationGeographicLocationCodeSequence", "PerformedStationClassCodeSequence",
        "PerformedProcedureStepDiscontinuationReasonCodeSequence",
    ],
    "Clinical Trial Series (C.7.3.2)": [
        "ClinicalTrialCoordinatingCenterName", "ClinicalTrialSeriesID",
        "IssuerOfClinicalTrialSeriesID", "ClinicalTrialSeriesDescription",
    ],
    "Enhanced Series / Enhanced US / Enhanced Mammography / Enhanced PET Series": [
        "PerformedProtocolType", "PresentationIntentType",
    ],
    "CR Series (C.8.1.1)": [
        "ViewPosition", "FilterType", "CollimatorGridName", "FocalSpots", "PlateType",
        "PhosphorType",
    ],
    "PET Series (C.8.9.1)": [
        "Units", "SUVType", "CountsSource", "SeriesType", "ReprojectionMethod",
        "NumberOfRRIntervals", "NumberOfTimeSlots", "NumberOfTimeSlices", "NumberOfSlices",
        "CorrectedImage", "RandomsCorrectionMethod", "AttenuationCorrectionMethod",
        "ScatterCorrectionMethod", "DecayCorrection", "ReconstructionDiameter",
        "ConvolutionKernel", "ReconstructionMethod", "DetectorLinesOfResponseUsed",
        "AcquisitionStartCondition", "AcquisitionStartConditionData",
        "AcquisitionTerminationCondition", "AcquisitionTerminationConditionData",
        "FieldOfViewShape", "FieldOfViewDimensions", "GantryDetectorTilt",
        "GantryDetectorSlew", "TypeOfDetectorMotion", "CollimatorType", "AxialAcceptance",
        "AxialMash", "TransverseMash", "DetectorElementSize", "CoincidenceWindowWidth",
        "EnergyWindowRangeSequence", "SecondaryCountsType", "SecondaryCountsAccumulated",
        "ScanProgressionDirection",
    ],
    "PET Isotope / PET Multi-gated Acquisition (C.8.9.2, C.8.9.3)": [
        "RadiopharmaceuticalInformationSequence", "InterventionDrugInformationSequence",
        "BeatRejectionFlag", "TriggerSourceOrType", "PVCRejection", "SkipBeats", "HeartRate",
        "CardiacFramingType",
    ],
    "NM/PET Patient Orientation (C.8.4.6)": [
        "PatientOrientationCodeSequence", "PatientGantryRelationshipCodeSequence",
    ],
    "Frame of Reference / Synchronization / US Frame of Reference (C.7.4)": [
        "FrameOfReferenceUID", "PositionReferenceIndicator",
        "SynchronizationFrameOfReferenceUID", "SynchronizationTrigger",
        "SynchronizationChannel", "AcquisitionTimeSynchronized", "TimeSource",
        "TimeDistributionProtocol", "NTPSourceAddress", "VolumeFrameOfReferenceUID",
        "PatientFrameOfReferenceSource", "TableFrameOfReferenceUID",
        "VolumeToTransducerRelationship", "VolumeToTableMappingMatrix",
        "VolumeToTransducerMappingMatrix",
    ],
    "General / Enhanced General / SC / VL Photographic Equipment (C.7.5, C.8.6.1)": [
        "Manufacturer", "InstitutionName", "InstitutionAddress", "StationName",
        "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
        "ManufacturerModelName", "ManufacturerModelVersion", "DeviceSerialNumber",
        "SoftwareVersions", "GantryID", "UDISequence", "DeviceUID", "SpatialResolution",
        "DateOfLastCalibration", "TimeOfLastCalibration", "DateOfManufacture",
        "DateOfInstallation", "ConversionType", "SecondaryCaptureDeviceID",
        "SecondaryCaptureDeviceManufacturer", "SecondaryCaptureDeviceManufacturerModelName",
        "SecondaryCaptureDeviceSoftwareVersions", "VideoImageFormatAcquired",
        "DigitalImageFormatAcquired", "CameraOwnerName", "LensSpecification", "LensMake",
        "LensModel", "LensSerialNumber",
    ],
    "Q/R series level (PS3.4 C.6.1.1.4)": [
        "NumberOfSeriesRelatedInstances",
    ],
}

# The Specific Character Set is per object (the receiver needs it to decode
# every instance), so it is instance level even though the Q/R model repeats
# it at every level.

LEVELS = (("Patient", PATIENT), ("Study", STUDY), ("Series", SERIES))


def collect() -> tuple[dict[str, str], dict[str, str]]:
    """keyword -> level, keyword -> module (the first that lists it)."""
    level_of: dict[str, str] = {}
    module_of: dict[str, str] = {}
    unknown: list[str] = []
    for level, modules in LEVELS:
        for module, keywords in modules.items():
            for kw in keywords:
                if kw not in keyword_dict:
                    unknown.append(f"{module}: {kw}")
                    continue
                if kw in level_of:
                    continue  # a higher level already has it
                level_of[kw] = level
                module_of[kw] = module
    if unknown:
        raise SystemExit("keywords unknown to the data dictionary:\n  " + "\n  ".join(unknown))
    return level_of, module_of


def main() -> None:
    level_of, module_of = collect()
    rows = sorted((keyword_dict[kw], kw, lvl) for kw, lvl in level_of.items())
    lines = [
        "//! Generated by scripts/gen_attribute_levels.py from the DICOM data dictionary",
        "//! (PS3.6) and the information model (PS3.3 IEs, PS3.4 Q/R levels). Do not edit.",
        "//!",
        "//! Attributes of the patient, study and series levels, sorted by tag. Every",
        "//! other attribute is instance level.",
        "",
        "use crate::tags::Level;",
        "",
        "#[rustfmt::skip]",
        "pub const ATTRIBUTE_LEVELS: &[(u32, &str, Level)] = &[",
    ]
    for tag, kw, lvl in rows:
        lines.append(f'    (0x{tag:08X}, "{kw}", Level::{lvl}),')
    lines.append("];")
    OUT.write_text("\n".join(lines) + "\n")

    counts = {lvl: sum(1 for r in rows if r[2] == lvl) for lvl, _ in LEVELS}
    doc = [
        "# Information-model level of each attribute",
        "",
        "Generated by `scripts/gen_attribute_levels.py`; do not edit. Used by the",
        '`"ByScope"` and `"StudyLevel"` grouping strategies and by `OnStudyCompleted`.',
        "",
        f"{counts['Patient']} patient, {counts['Study']} study and {counts['Series']} series"
        f" attributes; every other standard attribute ({len(DicomDictionary) - len(rows)} in"
        " the dictionary), every private tag and every custom tag is instance level.",
        "",
        "| tag | keyword | level | module |",
        "| --- | --- | --- | --- |",
    ]
    for tag, kw, lvl in rows:
        doc.append(
            f"| ({tag >> 16:04X},{tag & 0xFFFF:04X}) | {kw} | {lvl.lower()} | {module_of[kw]} |"
        )
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(doc) + "\n")
    print(f"wrote {OUT} and {DOC}: {counts}")


if __name__ == "__main__":
    main()
