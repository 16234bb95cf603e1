"""store_with_file_meta=True writes valid Part-10 files around the received bytes."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from conftest import (
    CORPUS,
    CORPUS_IDS,
    DCMDUMP,
    DCMFTEST,
    DCMTK_AE,
    Prepared,
    RunningScp,
    Sample,
    assert_file_stored,
    assert_incoming_empty,
    dcmtk_wire_bytes,
    split_part10,
    storescu,
    ui,
)


@pytest.mark.parametrize("sample", CORPUS, ids=CORPUS_IDS)
def test_file_meta(
    sample: Sample, corpus: dict[str, Prepared], scp_factory: Callable[..., RunningScp]
) -> None:
    run = scp_factory(store_with_file_meta=True)
    prepared = corpus[sample.name]
    storescu(run.port, [prepared.path], "-R", sample.flag)
    (event,) = run.log.wait_for("OnFileStored", 1)
    assert_file_stored(
        event,
        prepared,
        run.out_dir,
        dcmtk_wire_bytes(prepared),
        calling_ae=DCMTK_AE,
        with_meta=True,
    )
    path = Path(event["file"])
    data = path.read_bytes()
    assert len(data) > 132 and data[128:132] == b"DICM"

    elements, _, meta_end = split_part10(data)
    meta = dict(elements)
    tags = [t for t, _ in elements]
    assert tags == sorted(tags), f"meta elements out of order: {[hex(t) for t in tags]}"
    assert tags[0] == 0x00020000, "File Meta Information Group Length must come first"
    # 132 bytes of preamble+magic, 12 bytes of the group length element itself.
    (group_len,) = struct.unpack("<I", meta[0x00020000])
    assert group_len == meta_end - 132 - 12, "wrong (0002,0000)"
    assert meta[0x00020001] == b"\x00\x01", "File Meta Information Version"
    assert ui(meta[0x00020002]) == prepared.sop_class_uid
    assert ui(meta[0x00020003]) == prepared.sop_instance_uid
    assert ui(meta[0x00020010]) == event["transfer_syntax_uid"] == prepared.transfer_syntax_uid
    assert ui(meta.get(0x00020012, b"")), "Implementation Class UID missing"
    source_ae = meta.get(0x00020016)
    assert source_ae is not None, "Source Application Entity Title missing"
    assert source_ae.decode("ascii").strip() == DCMTK_AE
    for tag, value in elements:
        assert len(value) % 2 == 0, f"odd-length meta value {tag:#010x}: {value!r}"

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == prepared.transfer_syntax_uid
    assert ds.file_meta.MediaStorageSOPInstanceUID == prepared.sop_instance_uid
    assert ds.SOPInstanceUID == prepared.sop_instance_uid
    assert ds.StudyInstanceUID == prepared.study_instance_uid
    assert sum(1 for _ in ds.iterall()) > 5  # every element parses

    ftest = subprocess.run(
        [DCMFTEST, str(path)], capture_output=True, text=True, errors="replace", timeout=30
    )
    assert ftest.returncode == 0 and ftest.stdout.startswith("yes:"), ftest.stdout + ftest.stderr
    dump = subprocess.run(
        [DCMDUMP, "-q", "+fo", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=30,
    )
    assert dump.returncode == 0, dump.stderr[-2000:]
    assert_incoming_empty(run.out_dir)


def test_default_has_no_meta(corpus: dict[str, Prepared], scp: RunningScp) -> None:
    """Default: the file holds the data set only, no preamble, no DICM."""
    prepared = corpus["CT_small.dcm"]
    storescu(scp.port, [prepared.path], "-R", "-xe")
    (event,) = scp.log.wait_for("OnFileStored", 1)
    data = Path(event["file"]).read_bytes()
    assert data[128:132] != b"DICM"
    assert data == dcmtk_wire_bytes(prepared)
