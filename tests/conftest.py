"""Shared fixtures and helpers for the end-to-end tests.

Everything here talks to real peers: dcmtk's command line tools (always by
their absolute path under /usr/bin, because pynetdicom installs scripts with the
same names) and pynetdicom. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from dicom_storescp import StoreScp
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMFTEST = "/usr/bin/dcmftest"
DCMDUMP = "/usr/bin/dcmdump"
DCMCONV = "/usr/bin/dcmconv"

HOST = "127.0.0.1"
SCP_AE = "STORE-SCP"
DCMTK_AE = "DCMTK-SCU"
DEFLATED_TS = "1.2.840.10008.1.2.1.99"
# dcmtk 3.6.7 leaves Nagle on unless told otherwise (~40 ms per round trip).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
TIMEOUT = 30.0

Event = dict[str, Any]


def pytest_configure(config: pytest.Config) -> None:
    # Some samples (and the refusal tests on purpose) carry UIDs pydicom warns about.
    config.addinivalue_line("filterwarnings", "ignore::UserWarning:pydicom.valuerep")


# --------------------------------------------------------------------------
# Sample corpus
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A pydicom test file and the storescu flag that proposes its own TS."""

    name: str
    flag: str
    kind: str


# One or more per transfer syntax category. Flags were checked against dcmtk's
# own storescp in bit-preserving mode (+B): with `-R <flag>` storescu proposes
# (and uses) exactly the file's transfer syntax and sends the data set bytes
# unchanged, once the file has been normalised by `dcmconv -p` (see below).
CORPUS: list[Sample] = [
    Sample("MR_small_implicit.dcm", "-xi", "implicit VR little endian"),
    Sample("rtplan.dcm", "-xi", "RT plan, implicit VR"),
    Sample("rtdose.dcm", "-xi", "RT dose, multi-frame, implicit VR"),
    Sample("CT_small.dcm", "-xe", "explicit VR little endian"),
    Sample("MR_small.dcm", "-xe", "explicit VR little endian"),
    Sample("test-SR.dcm", "-xe", "comprehensive SR"),
    Sample("reportsi.dcm", "-xe", "basic text SR, nested sequences"),
    Sample("waveform_ecg.dcm", "-xe", "ECG waveform, 290 kB"),
    Sample("liver_1frame.dcm", "-xe", "segmentation"),
    Sample("examples_overlay.dcm", "-xe", "MR with overlay, 320 kB"),
    Sample("MR_small_bigendian.dcm", "-xb", "explicit VR big endian"),
    Sample("ExplVR_BigEnd.dcm", "-xb", "explicit VR big endian"),
    Sample("image_dfl.dcm", "-xd", "deflated explicit VR little endian"),
    Sample("SC_rgb_jpeg_dcmtk.dcm", "-xy", "JPEG baseline"),
    Sample("examples_ybr_color.dcm", "-xy", "JPEG baseline, 30 frames"),
    Sample("JPGExtended.dcm", "-xx", "JPEG extended"),
    Sample("SC_rgb_jpeg_gdcm.dcm", "-xs", "JPEG lossless SV1"),
    Sample("MR_small_jpeg_ls_lossless.dcm", "-xt", "JPEG-LS lossless"),
    Sample("JPEGLSNearLossless_08.dcm", "-xu", "JPEG-LS near-lossless"),
    Sample("MR_small_jp2klossless.dcm", "-xv", "JPEG 2000 lossless"),
    Sample("examples_jpeg2k.dcm", "-xv", "JPEG 2000 lossless, 150 kB"),
    Sample("JPEG2000.dcm", "-xw", "JPEG 2000"),
    Sample("693_J2KI.dcm", "-xw", "JPEG 2000"),
    Sample("MR_small_RLE.dcm", "-xr", "RLE lossless"),
    Sample("SC_rgb_rle_2frame.dcm", "-xr", "RLE lossless, 2 frames"),
]
CORPUS_IDS = [s.name for s in CORPUS]


@dataclass(frozen=True)
class Prepared:
    """A corpus file ready to send, with the identifiers the SCP must report."""

    name: str
    flag: str
    path: Path
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str

    @classmethod
    def from_dataset(cls, ds: pydicom.Dataset, path: Path, flag: str = "-xe") -> Prepared:
        """The identifiers of `ds`, a data set saved (with file meta) at `path`."""
        return cls(
            name=path.name,
            flag=flag,
            path=path,
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
        )

    def expected_path(self, out_dir: Path) -> Path:
        return (
            out_dir
            / self.study_instance_uid
            / self.series_instance_uid
            / f"{self.sop_instance_uid}.dcm"
        )


def _prepare(sample: Sample, dest_dir: Path, scratch: Path, seen: set[str]) -> Prepared:
    src = Path(get_testdata_file(sample.name))
    ds = pydicom.dcmread(src)
    changed = False
    # Some pydicom samples share a SOP Instance UID (MR_small in six transfer
    # syntaxes) or lack study/series UIDs: give them their own, so that each
    # lands at its own path.
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = generate_uid()
        changed = True
    if "SeriesInstanceUID" not in ds:
        ds.SeriesInstanceUID = generate_uid()
        changed = True
    if ds.SOPInstanceUID in seen:
        ds.SOPInstanceUID = generate_uid()
        changed = True
    seen.add(str(ds.SOPInstanceUID))
    if changed:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        src = scratch / sample.name
        ds.save_as(src, enforce_file_format=True)

    # storescu re-encodes what it sends: it drops data set trailing padding,
    # writes sequences with explicit lengths, recalculates group lengths and
    # re-deflates deflated data. `dcmconv -p` writes the file exactly the way
    # storescu will send it, so "bytes on the wire" == "data set in the file".
    dest = dest_dir / sample.name
    cmd = [DCMCONV, "-q", "-p"]
    if ds.file_meta.TransferSyntaxUID == DEFLATED_TS:
        cmd.append("+td")
    subprocess.run([*cmd, str(src), str(dest)], check=True, timeout=60)

    out = pydicom.dcmread(dest, stop_before_pixels=True)
    return Prepared.from_dataset(out, dest, sample.flag)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Prepared]:
    """The CORPUS files, normalised, with unique SOP Instance UIDs, in one folder."""
    root = tmp_path_factory.mktemp("corpus")
    dest_dir = root / "files"
    scratch = root / "scratch"
    dest_dir.mkdir()
    scratch.mkdir()
    seen: set[str] = set()
    prepared = {s.name: _prepare(s, dest_dir, scratch, seen) for s in CORPUS}
    shutil.rmtree(scratch)
    return prepared


@pytest.fixture(scope="session")
def base_dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MR_small.dcm normalised with dcmconv: a small template for generated objects."""
    dest = tmp_path_factory.mktemp("base") / "base.dcm"
    subprocess.run(
        [DCMCONV, "-q", "-p", get_testdata_file("MR_small.dcm"), str(dest)],
        check=True,
        timeout=60,
    )
    return dest


def generate_objects(
    base: Path,
    dest: Path,
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Prepared]:
    """Write `count` distinct copies of `base` (new SOP Instance UIDs) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(base)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    out = []
    for i in range(count):
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = dest / f"obj{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(Prepared.from_dataset(ds, path))
    return out


# --------------------------------------------------------------------------
# Part-10 helpers
# --------------------------------------------------------------------------

_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def split_part10(data: bytes) -> tuple[list[tuple[int, bytes]], bytes, int]:
    """Split a Part-10 file into (meta elements, data set bytes, meta end offset).

    Meta elements are (tag, raw value) pairs of group 0002, which is always
    explicit VR little endian. Does not rely on (0002,0000).
    """
    assert len(data) >= 132, f"file too short for a Part-10 header ({len(data)} bytes)"
    assert data[128:132] == b"DICM", f"no DICM magic at offset 128: {data[124:136]!r}"
    pos = 132
    elements: list[tuple[int, bytes]] = []
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        elements.append(((group << 16) | elem, data[start : start + length]))
        pos = start + length
    return elements, data[pos:], pos


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a Part-10 file (everything after the meta group)."""
    return split_part10(path.read_bytes())[1]


def dcmtk_wire_bytes(prepared: Prepared) -> bytes:
    """What storescu puts on the wire for a dcmconv-normalised file.

    Identical to the file's data set, except that dcmtk pads an odd-length
    deflated stream with one zero byte (PDV values must have even length).
    """
    data = dataset_bytes(prepared.path)
    if prepared.transfer_syntax_uid == DEFLATED_TS and len(data) % 2:
        data += b"\x00"
    return data


def ui(value: bytes) -> str:
    """Decode a UI value, dropping its trailing NUL/space padding."""
    return value.decode("ascii").rstrip("\x00 ")


# --------------------------------------------------------------------------
# Events and the running SCP
# --------------------------------------------------------------------------


class EventLog:
    """Collects events from listeners (called on the SCP's dispatcher thread)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: dict[str, list[Event]] = defaultdict(list)

    def listener(self, name: str) -> Callable[[Event], None]:
        def on_event(event: Event) -> None:
            with self._cond:
                self._events[name].append(event)
                self._cond.notify_all()

        return on_event

    def get(self, name: str) -> list[Event]:
        with self._cond:
            return list(self._events[name])

    def wait_for(self, name: str, count: int, timeout: float = TIMEOUT) -> list[Event]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._events[name]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = self._events[name]
                    raise AssertionError(
                        f"expected {count} {name} events within {timeout}s, got {len(got)}"
                        f"; other events: { {k: len(v) for k, v in self._events.items()} }"
                        f"; last: {got[-3:]!r}; errors: {self._events.get('OnError', [])[:3]!r}"
                    )
                self._cond.wait(left)
            return list(self._events[name])


@dataclass
class RunningScp:
    scp: StoreScp
    out_dir: Path
    log: EventLog
    kwargs: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    @property
    def port(self) -> int:
        return int(self.scp.port)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.scp.stop()


EVENT_NAMES = (
    "OnServerStarted",
    "OnFileStored",
    "OnStudyCompleted",
    "OnError",
    "OnAssociationRejected",
)


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Callable[..., RunningScp]]:
    """Start StoreScp instances on 127.0.0.1:0, each with its own out_dir and log."""
    running: list[RunningScp] = []

    def make(**kwargs: Any) -> RunningScp:
        out_dir = tmp_path / f"scp{len(running)}"
        opts: dict[str, Any] = {"port": 0, "out_dir": str(out_dir), "host": HOST}
        opts.update(kwargs)
        scp = StoreScp(**opts)
        log = EventLog()
        for name in EVENT_NAMES:
            scp.add_event_listener(name, log.listener(name))
        run = RunningScp(scp=scp, out_dir=Path(opts["out_dir"]), log=log, kwargs=opts)
        running.append(run)
        scp.start()
        assert run.port > 0, f"scp.port after start() is {scp.port!r}"
        return run

    yield make
    for run in running:
        run.stop()


@pytest.fixture
def scp(scp_factory: Callable[..., RunningScp]) -> RunningScp:
    return scp_factory()


# --------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------


def storescu(
    port: int,
    files: Sequence[Path | str],
    *args: str,
    aet: str = DCMTK_AE,
    aec: str = SCP_AE,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's storescu against 127.0.0.1:port; by default require exit code 0."""
    cmd = [STORESCU, "-aet", aet, "-aec", aec, *args, HOST, str(port), *map(str, files)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",
        env=DCMTK_ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd[:12])} ... exited {proc.returncode}\n"
            f"stdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-2000:]}"
        )
    return proc


def echoscu(port: int, aec: str = SCP_AE, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-aec", aec, "-to", "5", "-ta", "5", HOST, str(port)],
        capture_output=True,
        text=True,
        errors="replace",
        env=DCMTK_ENV,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------
# Assertions
# --------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def incoming_files(out_dir: Path) -> list[Path]:
    """Spool files of objects in flight: the named ones under .incoming, and
    the anonymous (O_TMPFILE) ones the receiver holds open, which have no name
    and show up only as this process's descriptors (the SCP runs in-process)."""
    incoming = out_dir / ".incoming"
    if not incoming.exists():
        return []
    found = [p for p in incoming.rglob("*") if not p.is_dir()]
    prefix = f"{incoming.resolve()}/"
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix) and target.endswith("(deleted)"):
            found.append(Path(f"/proc/self/fd/{fd}"))
    return found


def assert_incoming_empty(out_dir: Path, timeout: float = 5.0) -> None:
    assert wait_until(lambda: not incoming_files(out_dir), timeout), (
        f"temporary files left in .incoming: {incoming_files(out_dir)}"
    )


def stored_files(out_dir: Path) -> set[Path]:
    """Every regular file under out_dir except the .incoming folder."""
    if not out_dir.exists():
        return set()
    return {
        p.resolve()
        for p in out_dir.rglob("*")
        if p.is_file() and ".incoming" not in p.relative_to(out_dir).parts
    }


def by_sop_uid(events: list[Event]) -> dict[str, Event]:
    out: dict[str, Event] = {}
    for ev in events:
        uid = ev["sop_instance_uid"]
        assert uid not in out, f"two OnFileStored events for {uid}"
        out[uid] = ev
    return out


def assert_file_stored(
    event: Event,
    prepared: Prepared,
    out_dir: Path,
    expected: bytes,
    *,
    calling_ae: str,
    with_meta: bool = False,
) -> None:
    """Check one OnFileStored event and the file it names."""
    want_path = prepared.expected_path(out_dir)
    assert os.path.isabs(event["file"]), f"event file is not absolute: {event['file']!r}"
    assert Path(event["file"]).resolve() == want_path.resolve(), (
        f"stored at {event['file']}, expected {want_path}"
    )
    assert want_path.is_file(), f"{want_path} does not exist"
    for key in ("sop_instance_uid", "sop_class_uid", "study_instance_uid", "series_instance_uid"):
        assert event[key] == getattr(prepared, key), (
            f"{key}: event {event[key]!r} != file {getattr(prepared, key)!r}"
        )
    assert event["transfer_syntax_uid"] == prepared.transfer_syntax_uid, (
        f"negotiated TS {event['transfer_syntax_uid']!r}, file's own TS "
        f"{prepared.transfer_syntax_uid!r}"
    )
    assert event["calling_ae_title"] == calling_ae
    assert isinstance(event["peer"], str)
    assert event["peer"].startswith(f"{HOST}:"), event["peer"]
    assert isinstance(event["tags"], dict)
    assert set(event["tags"]) == {"patient", "study", "series", "instance"}, event["tags"]

    data = want_path.read_bytes()
    assert event["size"] == len(data), f"event size {event['size']} != file size {len(data)}"
    body = split_part10(data)[1] if with_meta else data
    if body != expected:
        first = next(
            (i for i in range(min(len(body), len(expected))) if body[i] != expected[i]),
            min(len(body), len(expected)),
        )
        raise AssertionError(
            f"stored data set differs from what was sent: stored {len(body)} bytes, "
            f"sent {len(expected)} bytes, first difference at offset {first}: "
            f"stored {body[first : first + 16]!r} sent {expected[first : first + 16]!r}"
        )
