"""The four grouping strategies, in OnFileStored and in OnStudyCompleted (SPEC §3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from conftest import RunningScp, storescu
from pydicom.uid import generate_uid

EXTRACT = ["PatientName", "PatientID", "StudyDate", "AccessionNumber", "Modality",
           "SeriesNumber", "InstanceNumber", "SliceThickness"]  # fmt: skip
CUSTOM = [{"tag": "00091001", "name": "CustomField"}]
LEVELS = {
    "PatientName": "patient", "PatientID": "patient", "StudyDate": "study",
    "AccessionNumber": "study", "Modality": "series", "SeriesNumber": "series",
    "InstanceNumber": "instance", "SliceThickness": "instance", "CustomField": "instance",
}  # fmt: skip
TIMEOUT = 0.5


def _study(base: Path, dest: Path) -> dict[str, dict[str, str]]:
    """One study, two series of two instances; returns sop uid -> expected flat tags."""
    dest.mkdir()
    ds = pydicom.dcmread(base)
    ds.StudyInstanceUID = generate_uid()
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P-1"
    ds.StudyDate = "20240131"
    ds.AccessionNumber = "ACC9"
    ds.SliceThickness = "2.5"
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    expected = {}
    for s, modality in enumerate(("MR", "CT"), start=1):
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = modality
        ds.SeriesNumber = str(s)
        for i in range(1, 3):
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = str(i)
            ds.add_new(0x00091001, "LO", f"custom {s}.{i}")
            ds.save_as(dest / f"{s}-{i}.dcm", enforce_file_format=True)
            expected[str(ds.SOPInstanceUID)] = {
                "PatientName": "DOE^JANE", "PatientID": "P-1", "StudyDate": "20240131",
                "AccessionNumber": "ACC9", "Modality": modality, "SeriesNumber": str(s),
                "InstanceNumber": str(i), "SliceThickness": "2.5",
                "CustomField": f"custom {s}.{i}",
            }  # fmt: skip
    return expected


def _run(
    scp_factory: Callable[..., RunningScp], base: Path, dest: Path, **kwargs: Any
) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]], dict[str, Any]]:
    expected = _study(base, dest)
    run = scp_factory(
        extract_tags=EXTRACT, extract_custom_tags=CUSTOM, study_timeout=TIMEOUT, **kwargs
    )
    storescu(run.port, sorted(dest.iterdir()), "-xe")
    stored = run.log.wait_for("OnFileStored", 4)
    (study,) = run.log.wait_for("OnStudyCompleted", 1)
    return expected, stored, study


def _check_study_skeleton(study: dict[str, Any], expected: dict[str, dict[str, str]]) -> None:
    assert set(study) == {"event", "study_instance_uid", "tags", "series"}
    assert len(study["series"]) == 2
    got = set()
    for series in study["series"]:
        assert set(series) == {"series_instance_uid", "tags", "instances"}
        assert len(series["instances"]) == 2
        for inst in series["instances"]:
            assert set(inst) == {
                "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file", "uri", "tags"
            }  # fmt: skip
            assert Path(inst["file"]).is_file()
            assert inst["uri"].startswith("file:///") and inst["uri"].endswith(".dcm")
            got.add(inst["sop_instance_uid"])
    assert got == set(expected)


def test_by_scope(scp_factory: Callable[..., RunningScp], base_dataset_file: Path,
                  tmp_path: Path) -> None:  # fmt: skip
    expected, stored, study = _run(scp_factory, base_dataset_file, tmp_path / "in")
    for ev in stored:
        want = expected[ev["sop_instance_uid"]]
        grouped: dict[str, dict[str, str]] = {
            "patient": {}, "study": {}, "series": {}, "instance": {}
        }  # fmt: skip
        for k, v in want.items():
            grouped[LEVELS[k]][k] = v
        assert ev["tags"] == grouped
    _check_study_skeleton(study, expected)
    # patient + study tags on the study, series tags on the series, the rest on instances
    assert study["tags"] == {
        "PatientName": "DOE^JANE", "PatientID": "P-1", "StudyDate": "20240131",
        "AccessionNumber": "ACC9",
    }  # fmt: skip
    for series in study["series"]:
        first = expected[series["instances"][0]["sop_instance_uid"]]
        assert series["tags"] == {"Modality": first["Modality"],
                                  "SeriesNumber": first["SeriesNumber"]}  # fmt: skip
        for inst in series["instances"]:
            want = expected[inst["sop_instance_uid"]]
            own = ("InstanceNumber", "SliceThickness", "CustomField")
            assert inst["tags"] == {k: want[k] for k in own}


def test_flat(scp_factory: Callable[..., RunningScp], base_dataset_file: Path,
              tmp_path: Path) -> None:  # fmt: skip
    expected, stored, study = _run(
        scp_factory, base_dataset_file, tmp_path / "in", grouping_strategy="Flat"
    )
    for ev in stored:
        assert ev["tags"] == expected[ev["sop_instance_uid"]]
    _check_study_skeleton(study, expected)
    assert study["tags"] == {}
    for series in study["series"]:
        assert series["tags"] == {}
        for inst in series["instances"]:
            assert inst["tags"] == expected[inst["sop_instance_uid"]]


def test_study_level(scp_factory: Callable[..., RunningScp], base_dataset_file: Path,
                     tmp_path: Path) -> None:  # fmt: skip
    expected, stored, study = _run(
        scp_factory, base_dataset_file, tmp_path / "in", grouping_strategy="StudyLevel"
    )
    upper = {"PatientName", "PatientID", "StudyDate", "AccessionNumber"}
    for ev in stored:
        want = expected[ev["sop_instance_uid"]]
        assert ev["tags"] == {
            "study_level": {k: v for k, v in want.items() if k in upper},
            "instance_level": {k: v for k, v in want.items() if k not in upper},
        }
    _check_study_skeleton(study, expected)
    assert set(study["tags"]) == upper
    for series in study["series"]:
        assert series["tags"] == {}
        for inst in series["instances"]:
            want = expected[inst["sop_instance_uid"]]
            assert inst["tags"] == {k: v for k, v in want.items() if k not in upper}


def test_custom(scp_factory: Callable[..., RunningScp], base_dataset_file: Path,
                tmp_path: Path) -> None:  # fmt: skip
    groups = {
        "who": ["PatientName", "PatientID"],
        # a group member that is not in extract_tags is extracted too
        "where": ["InstitutionName", "Modality"],
        "vendor": ["CustomField"],
    }
    expected, stored, study = _run(
        scp_factory, base_dataset_file, tmp_path / "in", grouping_strategy="Custom",
        custom_groups=groups,
    )  # fmt: skip
    base = pydicom.dcmread(base_dataset_file)
    institution = str(base.InstitutionName) if "InstitutionName" in base else None
    for ev in stored:
        want = dict(expected[ev["sop_instance_uid"]])
        where = {"Modality": want["Modality"]}
        if institution is not None:
            where = {"InstitutionName": institution, **where}
        assert ev["tags"] == {
            "who": {"PatientName": want["PatientName"], "PatientID": want["PatientID"]},
            "where": where,
            "vendor": {"CustomField": want["CustomField"]},
            "other": {k: v for k, v in want.items()
                      if k not in ("PatientName", "PatientID", "Modality", "CustomField")},
        }  # fmt: skip
        assert list(ev["tags"]) == ["who", "where", "vendor", "other"]
    _check_study_skeleton(study, expected)
    # Custom: the user's groups are kept, on each instance
    assert study["tags"] == {}
    for series in study["series"]:
        assert series["tags"] == {}
        for inst in series["instances"]:
            assert set(inst["tags"]) == {"who", "where", "vendor", "other"}
            assert inst["tags"]["vendor"] == {
                "CustomField": expected[inst["sop_instance_uid"]]["CustomField"]
            }


@pytest.mark.parametrize("strategy", ["ByScope", "Flat", "StudyLevel"])
def test_no_extraction_shapes(
    scp_factory: Callable[..., RunningScp], base_dataset_file: Path, tmp_path: Path,
    strategy: str,
) -> None:  # fmt: skip
    """Without extract_tags the shapes stay the same, with empty dicts."""
    run = scp_factory(grouping_strategy=strategy, study_timeout=TIMEOUT)
    storescu(run.port, [base_dataset_file], "-xe")
    (ev,) = run.log.wait_for("OnFileStored", 1)
    (study,) = run.log.wait_for("OnStudyCompleted", 1)
    assert (
        ev["tags"]
        == {
            "ByScope": {"patient": {}, "study": {}, "series": {}, "instance": {}},
            "Flat": {},
            "StudyLevel": {"study_level": {}, "instance_level": {}},
        }[strategy]
    )
    assert study["tags"] == {}
    assert study["series"][0]["instances"][0]["tags"] == {}
