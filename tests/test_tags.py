"""Tag extraction: values, character sets, private tags, option errors, and
bounded memory on a 1 GB object. Values are compared with what pydicom decodes
from the same files."""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pydicom
import pydicom.data
import pytest
from conftest import (
    DCMTK_ENV,
    HOST,
    RunningScp,
    free_port,
    storescu,
    wait_until,
)
from dicom_storescp import StoreScp, _core
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
            "UI", "UR", "UT"}  # fmt: skip


def _charset_files() -> list[Path]:
    """pydicom's character set samples that can be stored (they have UIDs)."""
    root = os.path.dirname(pydicom.data.__file__)
    out = []
    for path in sorted(glob.glob(os.path.join(root, "**", "chr*.dcm"), recursive=True)):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if all(k in ds for k in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")):
            out.append(Path(path))
    return out


CHARSET_FILES = _charset_files()


def expected_value(elem: pydicom.DataElement) -> str:
    """What the receiver must report for an element, from pydicom's decoding.

    pydicom strips the padding of a whole multi-valued string only; the
    receiver trims each value (trailing spaces are insignificant in every one
    of them, PS3.5 6.2), so `DERIVED \\PRIMARY` is `DERIVED\\PRIMARY`."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v).rstrip(" ") for v in value)
    return str(value)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._mutex:
            self.records.append(record)

    def messages(self, level: int = logging.WARNING) -> list[str]:
        with self._mutex:
            return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def log_records() -> Any:
    handler = _Records()
    logger = logging.getLogger("dicom_storescp")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _unique_copies(paths: list[Path], dest: Path) -> list[Path]:
    """Some samples share a SOP Instance UID: give duplicates their own (the
    other elements are written back byte for byte)."""
    seen: set[str] = set()
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        if str(ds.SOPInstanceUID) in seen:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = dest / path.name
            ds.save_as(path)
        seen.add(str(ds.SOPInstanceUID))
        out.append(path)
    return out


def test_charset_samples_match_pydicom(
    scp_factory: Callable[..., RunningScp], tmp_path: Path
) -> None:
    assert len(CHARSET_FILES) >= 14, [p.name for p in CHARSET_FILES]
    files = _unique_copies(CHARSET_FILES, tmp_path)
    datasets = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    keywords = sorted(
        {
            e.keyword
            for ds in datasets.values()
            for e in ds
            if e.VR in TEXT_VRS and e.keyword and e.tag.group != 0x0002
        }
    )
    assert {"PatientName", "ReferringPhysicianName", "StudyDescription"} <= set(keywords)
    run = scp_factory(extract_tags=keywords, grouping_strategy="Flat")
    storescu(run.port, files, "-xe")
    events = run.log.wait_for("OnFileStored", len(files))
    by_uid = {e["sop_instance_uid"]: e for e in events}

    checked = 0
    wanted_sets = set()
    for path, ds in datasets.items():
        tags = by_uid[str(ds.SOPInstanceUID)]["tags"]
        wanted_sets.add(str(ds.SpecificCharacterSet))
        present = {e.keyword for e in ds if e.keyword in keywords}
        assert set(tags) == present, f"{path.name}: keys {sorted(tags)} != {sorted(present)}"
        for kw in present:
            want = expected_value(ds[kw])
            assert tags[kw] == want, f"{path.name} {kw}: got {tags[kw]!r}, pydicom {want!r}"
            checked += 1
    assert checked > 100
    # Latin-1, UTF-8, GB18030, Greek, Cyrillic, Hebrew, Arabic, Japanese and Korean ISO 2022
    for charset in ("ISO_IR 100", "ISO_IR 192", "GB18030", "ISO_IR 126", "ISO_IR 144",
                    "ISO_IR 138", "ISO_IR 127", "['', 'ISO 2022 IR 87']",
                    "['ISO 2022 IR 13', 'ISO 2022 IR 87']", "['', 'ISO 2022 IR 149']"):  # fmt: skip
        assert charset in wanted_sets, charset


def _write(ds: Dataset, path: Path, implicit: bool = False) -> Path:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = (
        pydicom.uid.ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )
    ds.save_as(path, enforce_file_format=True)
    return path


def _base(charset: str | list[str] | None = None) -> Dataset:
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    return ds


def _rich_dataset() -> Dataset:
    ds = _base("ISO_IR 100")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Müller^Jörg"
    ds.PatientID = "ID 42"
    ds.OtherPatientIDs = ["A1", "B2"]
    ds.PatientWeight = "72.5"
    ds.StudyDescription = "Thorax"
    ds.InstanceNumber = "7"
    ds.Rows = 512
    ds.Columns = 256
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.add_new(0x00189087, "FD", 1000.5)  # DiffusionBValue
    ds.add_new(0x00280009, "AT", [0x00181063, 0x00181065])  # FrameIncrementPointer
    ds.add_new(0x00280106, "US", 3)  # SmallestImagePixelValue (US or SS)
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "private value")
    ds.add_new(0x00091002, "OB", b"\x00\x01\xfe\xff")
    ds.add_new(0x00110010, "LO", "OTHER VENDOR")
    ds.add_new(0x00110011, "LO", "ACME 1.0")
    ds.add_new(0x00111101, "LO", "block 11")
    ds.add_new(0x00111001, "LO", "block 10")
    return ds


RICH_TAGS = [
    "ImageType", "PatientName", "PatientID", "OtherPatientIDs", "PatientWeight",
    "StudyDescription", "InstanceNumber", "Rows", "Columns", "PixelSpacing", "00189087",
    "FrameIncrementPointer", "SmallestImagePixelValue", "PatientBirthTime", "00091002",
]  # fmt: skip
RICH_CUSTOM = [
    {"tag": "00091001", "name": "CustomField"},
    {"tag": "00111001", "name": "Acme01", "private_creator": "ACME 1.0"},
    {"tag": "00111001", "name": "Literal111001"},
]
RICH_EXPECTED = {
    "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
    "PatientName": "Müller^Jörg",
    "PatientID": "ID 42",
    "OtherPatientIDs": "A1\\B2",
    "PatientWeight": "72.5",
    "StudyDescription": "Thorax",
    "InstanceNumber": "7",
    "Rows": "512",
    "Columns": "256",
    "PixelSpacing": "0.5\\0.25",
    "DiffusionBValue": "1000.5",
    "FrameIncrementPointer": "(0018,1063)\\(0018,1065)",
    "SmallestImagePixelValue": "3",
    "00091002": "0001feff",
    "CustomField": "private value",
    # (0011,0011) reserves block 11 for ACME 1.0: (0011,1101)
    "Acme01": "block 11",
    "Literal111001": "block 10",
}


@pytest.mark.parametrize(("flag", "implicit"), [("-xe", False), ("-xi", True), ("-xb", False)])
def test_keywords_hex_custom_and_private_tags(
    scp_factory: Callable[..., RunningScp], tmp_path: Path, flag: str, implicit: bool
) -> None:
    path = _write(_rich_dataset(), tmp_path / "rich.dcm", implicit=implicit)
    run = scp_factory(
        extract_tags=RICH_TAGS, extract_custom_tags=RICH_CUSTOM, grouping_strategy="Flat"
    )
    storescu(run.port, [path], "-R", flag)
    (event,) = run.log.wait_for("OnFileStored", 1)
    tags = event["tags"]
    # In implicit VR the private tags arrive as UN: text stays text, the
    # binary OB is hex either way.
    assert tags == RICH_EXPECTED, f"{flag}: {tags}"
    assert "PatientBirthTime" not in tags  # absent stays absent
    assert all(isinstance(v, str) for v in tags.values())


def test_big_endian_numbers(scp_factory: Callable[..., RunningScp], tmp_path: Path) -> None:
    """Explicit VR big endian: binary numbers are byte-swapped correctly."""
    ds = _base()
    ds.Rows = 0x0102
    ds.add_new(0x00189087, "FD", -2.25)
    ds.add_new(0x00181063, "DS", "33.3")
    path = tmp_path / "be.dcm"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    ds.save_as(path, enforce_file_format=True)
    run = scp_factory(extract_tags=["Rows", "DiffusionBValue", "FrameTime"])
    storescu(run.port, [path], "-R", "-xb")
    (event,) = run.log.wait_for("OnFileStored", 1)
    assert event["transfer_syntax_uid"] == "1.2.840.10008.1.2.2"
    assert event["tags"]["instance"] == {
        "Rows": "258",
        "DiffusionBValue": "-2.25",
        "FrameTime": "33.3",
    }


def test_corpus_values_match_pydicom(scp_factory: Callable[..., RunningScp], corpus: Any) -> None:
    """Every transfer syntax of the corpus (deflated, big endian, compressed...)."""
    keywords = ["PatientName", "PatientID", "StudyDate", "Modality", "SeriesNumber",
                "InstanceNumber", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation",
                "ImageType", "Manufacturer"]  # fmt: skip
    run = scp_factory(extract_tags=keywords, grouping_strategy="Flat")
    for p in corpus.values():
        storescu(run.port, [p.path], "-R", p.flag)
    events = {e["sop_instance_uid"]: e for e in run.log.wait_for("OnFileStored", len(corpus))}
    for p in corpus.values():
        ds = pydicom.dcmread(p.path, stop_before_pixels=True)
        tags = events[p.sop_instance_uid]["tags"]
        for kw in keywords:
            if kw in ds:
                assert tags.get(kw) == expected_value(ds[kw]), (p.name, kw, tags.get(kw))
            else:
                assert kw not in tags, (p.name, kw)


@pytest.mark.filterwarnings("ignore:Unknown encoding")
def test_undecodable_charset_is_logged_with_fallback(
    scp_factory: Callable[..., RunningScp], tmp_path: Path, log_records: _Records
) -> None:
    unknown = _base("ISO_IR 999")
    unknown.PatientName = "Buc^J\xe9r\xf4me"
    p1 = tmp_path / "unknown.dcm"
    _write(unknown, p1)
    # patch the name's bytes: pydicom wrote it with its own fallback
    raw = p1.read_bytes().replace("Buc^Jérôme".encode("latin-1"), b"Buc^J\xe9r\xf4me")
    p1.write_bytes(raw)

    bad_utf8 = _base("ISO_IR 192")
    bad_utf8.PatientName = "ABCD"
    p2 = tmp_path / "bad_utf8.dcm"
    _write(bad_utf8, p2)
    p2.write_bytes(p2.read_bytes().replace(b"ABCD", b"AB\xff\xfe"))

    run = scp_factory(extract_tags=["PatientName"])
    storescu(run.port, [p1, p2], "-xe")
    events = {e["sop_instance_uid"]: e for e in run.log.wait_for("OnFileStored", 2)}
    # unknown charset: decoded as ISO 8859-1 (the documented fallback), logged
    assert events[str(unknown.SOPInstanceUID)]["tags"]["patient"]["PatientName"] == "Buc^Jérôme"
    # invalid UTF-8: replacement characters, logged
    assert events[str(bad_utf8.SOPInstanceUID)]["tags"]["patient"]["PatientName"] == (
        "AB\ufffd\ufffd"
    )
    warnings = log_records.messages()
    assert any("ISO_IR 999" in m and "not supported" in m for m in warnings), warnings
    assert any("(0010,0010)" in m and "could not be decoded" in m for m in warnings), warnings


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"extract_tags": ["PatientNam"]}, "extract_tags"),
        ({"extract_tags": ["0010001"]}, "extract_tags"),
        ({"extract_tags": ["ZZZZZZZZ"]}, "extract_tags"),
        ({"extract_tags": "PatientName"}, "extract_tags"),
        ({"extract_tags": ["ReferencedImageSequence"]}, "extract_tags"),
        ({"extract_tags": ["PixelData"]}, "extract_tags"),
        ({"extract_tags": ["TransferSyntaxUID"]}, "extract_tags"),
        ({"extract_custom_tags": [{"tag": "0009100", "name": "X"}]}, "extract_custom_tags"),
        ({"extract_custom_tags": [{"tag": "00091001"}]}, "extract_custom_tags"),
        ({"extract_custom_tags": [{"tag": "00091001", "name": ""}]}, "extract_custom_tags"),
        ({"extract_custom_tags": [{"tag": "00091001", "name": "X", "creator": "A"}]},
         "extract_custom_tags"),
        ({"extract_custom_tags": [{"tag": "00100010", "name": "X", "private_creator": "A"}]},
         "extract_custom_tags"),
        ({"extract_tags": ["PatientID"],
          "extract_custom_tags": [{"tag": "00091001", "name": "PatientID"}]},
         "extract_custom_tags"),
        ({"grouping_strategy": "Nested"}, "grouping_strategy"),
        ({"grouping_strategy": "Custom"}, "custom_groups"),
        ({"grouping_strategy": "Custom", "custom_groups": {"a": ["NoSuchKeyword"]}},
         "custom_groups"),
        ({"grouping_strategy": "Custom", "custom_groups": {"other": ["PatientID"]}},
         "custom_groups"),
        ({"grouping_strategy": "Custom",
          "custom_groups": {"a": ["PatientID"], "b": ["PatientID"]}}, "custom_groups"),
        ({"grouping_strategy": "Flat", "custom_groups": {"a": ["PatientID"]}}, "custom_groups"),
        ({"study_timeout": 0}, "study_timeout"),
        ({"study_timeout": -1.5}, "study_timeout"),
        ({"study_timeout": "30"}, "study_timeout"),
    ],
)  # fmt: skip
def test_bad_tag_options_raise_value_error(
    tmp_path: Path, kwargs: dict[str, Any], option: str
) -> None:
    with pytest.raises(ValueError) as info:
        StoreScp(port=0, out_dir=str(tmp_path), host=HOST, **kwargs)
    assert option in str(info.value), str(info.value)


def test_tag_spellings_and_levels(tmp_path: Path) -> None:
    """Keywords come from the full dictionary; hex tags in three spellings."""
    assert _core.tag_for_keyword("CTDIvol") == (0x00189345, "FD")
    assert _core.keyword_for_tag(0x00100010) == ("PatientName", "PN")
    levels = {kw: lvl for _, kw, lvl in _core.attribute_levels()}
    assert len(levels) >= 300
    assert sum(1 for v in levels.values() if v == "patient") >= 50
    assert sum(1 for v in levels.values() if v == "study") >= 50
    assert sum(1 for v in levels.values() if v == "series") >= 50
    assert _core.attribute_level(0x00200013) == "instance"  # InstanceNumber
    assert _core.attribute_level(0x00091001) == "instance"  # private
    # the documented table is the generated one
    doc = (Path(__file__).resolve().parent.parent / "docs" / "attribute-levels.md").read_text()
    rows = re.findall(r"^\| \(([0-9A-F]{4}),([0-9A-F]{4})\) \| (\w+) \| (\w+) \|", doc, re.M)
    assert {kw: lvl for _, _, kw, lvl in rows} == levels
    for spelling in ("00100010", "0010,0010", "(0010,0010)"):
        StoreScp(port=0, out_dir=str(tmp_path), extract_tags=[spelling])


# --------------------------------------------------------------------------
# 1 GB object: extraction reads the head only, memory stays flat
# --------------------------------------------------------------------------


def _element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC"):
        head += b"\x00\x00" + struct.pack("<I", n)
    else:
        head += struct.pack("<H", n)
    return head + value


def _ui(uid: str) -> bytes:
    b = uid.encode()
    return b + b"\x00" if len(b) % 2 else b


def _write_huge(path: Path, blob: int, pixels: int) -> dict[str, str]:
    """A Part-10 file with a `blob`-byte private OB before the patient module
    and `pixels` bytes of pixel data, written sparsely (holes read as zeros)."""
    sop_class, sop, study, series = (
        "1.2.840.10008.5.1.4.1.1.7",
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    meta_body = b"".join(
        [
            _element(0x00020001, b"OB", b"\x00\x01"),
            _element(0x00020002, b"UI", _ui(sop_class)),
            _element(0x00020003, b"UI", _ui(sop)),
            _element(0x00020010, b"UI", _ui(ExplicitVRLittleEndian)),
            _element(0x00020012, b"UI", _ui("1.2.3.4")),
        ]
    )
    meta = _element(0x00020000, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    head = b"".join(
        [
            _element(0x00080016, b"UI", _ui(sop_class)),
            _element(0x00080018, b"UI", _ui(sop)),
            _element(0x00080060, b"CS", b"OT"),
            _element(0x00090010, b"LO", b"HUGE VENDOR "),
            _element(0x00091001, b"LO", b"before the blob "),
        ]
    )
    middle = b"".join(
        [
            _element(0x00100010, b"PN", b"HUGE^OBJECT "),
            _element(0x00100020, b"LO", b"BIG1"),
            _element(0x0020000D, b"UI", _ui(study)),
            _element(0x0020000E, b"UI", _ui(series)),
            _element(0x00200013, b"IS", b"1 "),
            _element(0x00280002, b"US", struct.pack("<H", 1)),
            _element(0x00280004, b"CS", b"MONOCHROME2 "),
            _element(0x00280010, b"US", struct.pack("<H", 16384)),
            _element(0x00280011, b"US", struct.pack("<H", pixels // 32768)),
            _element(0x00280100, b"US", struct.pack("<H", 16)),
            _element(0x00280101, b"US", struct.pack("<H", 16)),
            _element(0x00280102, b"US", struct.pack("<H", 15)),
            _element(0x00280103, b"US", struct.pack("<H", 0)),
        ]
    )
    size = len(head) + 12 + blob + len(middle) + 12 + pixels
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM" + meta + head)
        f.write(_element(0x00091002, b"OB", b"", length=blob))
        f.seek(blob, os.SEEK_CUR)
        f.write(middle)
        f.write(_element(0x7FE00010, b"OW", b"", length=pixels))
        f.seek(pixels - 2, os.SEEK_CUR)
        f.write(b"\x00\x00")
    return {"sop": sop, "study": study, "series": series, "size": str(size)}


def _vm_hwm_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert m, status
    return int(m.group(1))


def test_one_gigabyte_object_memory_stays_flat(tmp_path: Path) -> None:
    """The receiver (run as the CLI, so its RSS is its own) extracts tags on both
    sides of a 512 MiB private blob and before 512 MiB of pixel data without
    its peak RSS growing by anything like the object's size."""
    blob = pixels = 512 * 1024 * 1024
    src = tmp_path / "huge.dcm"
    uids = _write_huge(src, blob, pixels)
    port = free_port()
    out_dir = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_storescp", "--port", str(port), "--host", HOST,
         "--out-dir", str(out_dir), "--json", "--study-timeout", "0.5",
         "--extract-tags", "PatientName,PatientID,InstanceNumber,Rows,Columns",
         "--extract-custom-tag", "00091001=BeforeBlob"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert wait_until(
            lambda: subprocess.run(
                ["/usr/bin/echoscu", "-aec", "STORE-SCP", HOST, str(port)],
                env=DCMTK_ENV, capture_output=True,
            ).returncode == 0,
            timeout=20,
        ), "CLI not listening"  # fmt: skip
        baseline = _vm_hwm_kib(proc.pid)
        started = time.monotonic()
        storescu(port, [src], "-xe", "--max-pdu", "65536", timeout=600)
        took = time.monotonic() - started
        assert proc.stdout is not None
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, f"CLI ended early: {proc.stderr.read() if proc.stderr else ''}"
            event = json.loads(line)
            lines.append(event)
            if event["event"] == "OnStudyCompleted":
                break
        peak = _vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    stored = next(e for e in lines if e["event"] == "OnFileStored")
    assert stored["sop_instance_uid"] == uids["sop"]
    assert stored["size"] == int(uids["size"])
    assert stored["tags"] == {
        "patient": {"PatientName": "HUGE^OBJECT", "PatientID": "BIG1"},
        "study": {},
        "series": {},
        "instance": {"InstanceNumber": "1", "Rows": "16384", "Columns": "16384",
                     "BeforeBlob": "before the blob"},
    }  # fmt: skip
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 100, (
        f"peak RSS grew by {growth_mib:.0f} MiB while receiving a "
        f"{(blob + pixels) >> 20} MiB object in {took:.1f}s"
    )
    assert Path(stored["file"]).stat().st_size == stored["size"]
    # a gigabyte less on the disk for the next tests
    Path(stored["file"]).unlink()
    src.unlink()
