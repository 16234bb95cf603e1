"""Benchmark data: generated on demand, cached under the work directory.

Three data sets, all Explicit VR Little Endian Part-10 files with the tags a
real archive would look at:

- ``ct``: a CT-like series of N slices of 512×512 16-bit pixels (~0.5 MB each);
- ``small``: N small 64×64 16-bit objects (~10 kB each), spread over a few series;
- ``big``: one multi-frame object of F frames of 512×512 16-bit pixels, written
  streaming: pydicom writes the file meta and the header, the pixel data
  bytes are appended in chunks, so it never exists in memory at once.

A ``manifest.json`` records the parameters; a data set is regenerated only
when they change.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"

# One fixed root so names are stable between runs of the same parameters.
UID_ROOT = "1.2.826.0.1.3680043.10.1363.9."

CHUNK = 8 << 20


def _uid(rng: random.Random) -> str:
    return generate_uid(prefix=UID_ROOT, entropy_srcs=[str(rng.getrandbits(64))])


def _base(rng: random.Random, study: str, series: str, sop_class: str, number: int) -> Dataset:
    sop_instance = _uid(rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(UID_ROOT + "1")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = "BENCH^PATIENT"
    ds.PatientID = "BENCH0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyDescription = "dicom-storescp benchmark"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 1
    ds.SeriesDescription = "benchmark series"
    ds.InstanceNumber = number
    # Every tag scp_python.EXTRACT_TAGS asks for is set above.
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def _write(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def _pixels(rng: random.Random, nbytes: int, pool: list[bytes]) -> bytes:
    """Pseudo-random pixel bytes: a few random blocks, rotated per object."""
    if not pool:
        pool.extend(rng.randbytes(nbytes) for _ in range(4))
    block = pool[rng.randrange(len(pool))]
    cut = rng.randrange(0, nbytes, 2)
    return block[cut:] + block[:cut]


def make_ct(out: Path, count: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    study, series, frame_of_reference = _uid(rng), _uid(rng), _uid(rng)
    pool: list[bytes] = []
    for i in range(count):
        ds = _base(rng, study, series, CT_IMAGE_STORAGE, i + 1)
        ds.Modality = "CT"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImagePositionPatient = [-250.0, -250.0, -float(i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = 1.0
        ds.SliceLocation = -float(i)
        ds.PixelSpacing = [0.9765625, 0.9765625]
        ds.Rows = ds.Columns = 512
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = _pixels(rng, 512 * 512 * 2, pool)
        _write(ds, out / f"ct_{i:05d}.dcm")


def make_small(out: Path, count: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    study = _uid(rng)
    series = [_uid(rng) for _ in range(4)]
    pool: list[bytes] = []
    for i in range(count):
        s = i % len(series)
        ds = _base(rng, study, series[s], SECONDARY_CAPTURE_STORAGE, i // len(series) + 1)
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
        ds.SeriesNumber = s + 1
        ds.Rows = ds.Columns = 64
        ds.PixelData = _pixels(rng, 64 * 64 * 2, pool)
        _write(ds, out / f"small_{i:05d}.dcm")


def make_big(out: Path, frames: int, seed: int = 3) -> None:
    """One multi-frame object, streamed to disk in 8 MiB chunks."""
    rng = random.Random(seed)
    ds = _base(rng, _uid(rng), _uid(rng), MULTIFRAME_WORD_SC_STORAGE, 1)
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    length = frames * 512 * 512 * 2
    if length >= 0xFFFFFFFE:
        raise ValueError(f"{frames} frames exceed the 4 GiB limit of one pixel data element")
    chunk = rng.randbytes(CHUNK)
    path = out / "big_00000.dcm"
    with open(path, "wb") as f:
        ds.save_as(f, enforce_file_format=True)
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved, 32-bit length.
        f.write(struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", length))
        left = length
        while left:
            n = min(left, CHUNK)
            f.write(chunk[:n])
            left -= n


def make_warm(out: Path) -> Path:
    """The single tiny object each receiver is warmed with before a timed run."""
    rng = random.Random(99)
    ds = _base(rng, _uid(rng), _uid(rng), SECONDARY_CAPTURE_STORAGE, 1)
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Rows = ds.Columns = 8
    ds.PixelData = bytes(8 * 8 * 2)
    path = out / "warm.dcm"
    _write(ds, path)
    return path


def ensure(root: Path, name: str, size: int) -> list[Path]:
    """The files of data set ``name`` (``ct``, ``small``, ``big``) with ``size``
    objects (frames for ``big``), generated unless already there."""
    makers = {"ct": make_ct, "small": make_small, "big": make_big}
    out = root / name
    manifest = out / "manifest.json"
    want = {"name": name, "size": size, "version": 1}
    if manifest.exists():
        try:
            have = json.loads(manifest.read_text())
        except ValueError:
            have = None
        if have == want:
            return sorted(out.glob("*.dcm"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    makers[name](out, size)
    manifest.write_text(json.dumps(want))
    return sorted(out.glob("*.dcm"))


def dataset_bytes(path: Path) -> int:
    """Size of the data set in a Part-10 file (the file minus preamble and meta)."""
    with open(path, "rb") as f:
        head = f.read(132 + 12)
        if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
            raise ValueError(f"{path}: no file meta group length")
        group_length = int.from_bytes(head[140:144], "little")
    return os.path.getsize(path) - (144 + group_length)
