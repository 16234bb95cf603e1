"""dcmtk's storescu sends pydicom's sample files in their own transfer syntaxes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from conftest import (
    CORPUS,
    CORPUS_IDS,
    DCMCONV,
    DCMTK_AE,
    Prepared,
    RunningScp,
    Sample,
    assert_file_stored,
    assert_incoming_empty,
    by_sop_uid,
    dataset_bytes,
    dcmtk_wire_bytes,
    stored_files,
    storescu,
)
from pydicom.data import get_testdata_file


def test_corpus_covers_every_transfer_syntax_category(corpus: dict[str, Prepared]) -> None:
    """The sample set must keep at least one file per category the SCP must accept."""
    syntaxes = {p.transfer_syntax_uid for p in corpus.values()}
    wanted = {
        "1.2.840.10008.1.2": "implicit VR LE",
        "1.2.840.10008.1.2.1": "explicit VR LE",
        "1.2.840.10008.1.2.2": "explicit VR BE",
        "1.2.840.10008.1.2.1.99": "deflated",
        "1.2.840.10008.1.2.4.50": "JPEG baseline",
        "1.2.840.10008.1.2.4.51": "JPEG extended",
        "1.2.840.10008.1.2.4.70": "JPEG lossless",
        "1.2.840.10008.1.2.4.80": "JPEG-LS lossless",
        "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
        "1.2.840.10008.1.2.4.90": "JPEG 2000 lossless",
        "1.2.840.10008.1.2.4.91": "JPEG 2000",
        "1.2.840.10008.1.2.5": "RLE",
    }
    missing = {uid: name for uid, name in wanted.items() if uid not in syntaxes}
    assert not missing, f"corpus lacks {missing}"


@pytest.mark.parametrize("sample", CORPUS, ids=CORPUS_IDS)
def test_store_in_own_transfer_syntax(
    sample: Sample, corpus: dict[str, Prepared], scp: RunningScp
) -> None:
    prepared = corpus[sample.name]
    storescu(scp.port, [prepared.path], "-R", sample.flag)
    (event,) = scp.log.wait_for("OnFileStored", 1)
    assert_file_stored(
        event, prepared, scp.out_dir, dcmtk_wire_bytes(prepared), calling_ae=DCMTK_AE
    )
    assert stored_files(scp.out_dir) == {prepared.expected_path(scp.out_dir).resolve()}
    assert_incoming_empty(scp.out_dir)
    scp.stop()
    assert len(scp.log.get("OnFileStored")) == 1
    assert scp.log.get("OnError") == []


def test_several_sop_classes_one_association(corpus: dict[str, Prepared], scp: RunningScp) -> None:
    """All explicit VR little endian samples (7 SOP classes) in one association."""
    explicit = [p for p in corpus.values() if p.transfer_syntax_uid == "1.2.840.10008.1.2.1"]
    assert len(explicit) >= 5
    storescu(scp.port, [p.path for p in explicit], "-R", "-xe")
    events = by_sop_uid(scp.log.wait_for("OnFileStored", len(explicit)))
    for p in explicit:
        assert_file_stored(
            events[p.sop_instance_uid], p, scp.out_dir, dcmtk_wire_bytes(p), calling_ae=DCMTK_AE
        )
    assert stored_files(scp.out_dir) == {p.expected_path(scp.out_dir).resolve() for p in explicit}
    assert_incoming_empty(scp.out_dir)


@pytest.fixture(scope="module")
def folder_of_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """pydicom's dicomdirtests images (CR, CT, MR), normalised, in nested folders."""
    src_root = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"
    sources = sorted(
        p
        for sub in ("77654033", "98892001", "98892003")
        for p in (src_root / sub).rglob("*")
        if p.is_file()
    )
    assert len(sources) >= 20, sources
    root = tmp_path_factory.mktemp("folder")
    out = []
    for i, src in enumerate(sources):
        dest = root / f"sub{i % 3}" / f"deeper{i % 2}" / f"img{i:03d}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([DCMCONV, "-q", "-p", str(src), str(dest)], check=True, timeout=60)
        out.append(dest)
    return out


def test_store_folder_recursive(folder_of_files: list[Path], scp: RunningScp) -> None:
    root = folder_of_files[0].parent.parent.parent
    storescu(scp.port, [root], "+sd", "+r")
    events = by_sop_uid(scp.log.wait_for("OnFileStored", len(folder_of_files)))
    expected_paths = set()
    for path in folder_of_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ev = events[ds.SOPInstanceUID]
        want = scp.out_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert Path(ev["file"]).resolve() == want.resolve()
        assert ev["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"
        assert want.read_bytes() == dataset_bytes(path), path
        expected_paths.add(want.resolve())
    assert stored_files(scp.out_dir) == expected_paths
    assert_incoming_empty(scp.out_dir)
    scp.stop()
    assert len(scp.log.get("OnFileStored")) == len(folder_of_files)


def test_small_max_pdu_many_fragments(
    corpus: dict[str, Prepared], scp_factory: Callable[..., RunningScp]
) -> None:
    """A 290 kB object in 4 kB PDUs from both sides still arrives byte for byte."""
    run = scp_factory(max_pdu_length=4096)
    prepared = corpus["waveform_ecg.dcm"]
    storescu(run.port, [prepared.path], "-R", "-xe", "--max-pdu", "4096", "--max-send-pdu", "4096")
    (event,) = run.log.wait_for("OnFileStored", 1)
    assert_file_stored(
        event, prepared, run.out_dir, dcmtk_wire_bytes(prepared), calling_ae=DCMTK_AE
    )


def test_repeat_same_object_overwrites_cleanly(
    corpus: dict[str, Prepared], scp: RunningScp, tmp_path: Path
) -> None:
    """The same SOP instance sent three times leaves one complete file."""
    prepared = corpus["CT_small.dcm"]
    copy = tmp_path / "copy.dcm"
    shutil.copy(prepared.path, copy)
    storescu(scp.port, [copy], "-R", "-xe", "--repeat", "3")
    events = scp.log.wait_for("OnFileStored", 3)
    for ev in events:
        assert Path(ev["file"]).resolve() == prepared.expected_path(scp.out_dir).resolve()
    assert prepared.expected_path(scp.out_dir).read_bytes() == dcmtk_wire_bytes(prepared)
    assert stored_files(scp.out_dir) == {prepared.expected_path(scp.out_dir).resolve()}
    assert_incoming_empty(scp.out_dir)
