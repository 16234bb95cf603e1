"""storage_backend="S3" against a real S3 server (moto, signatures checked),
fed by real DICOM peers (dcmtk's storescu, pynetdicom)."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from conftest import (
    DCMTK_AE,
    HOST,
    SCP_AE,
    EventLog,
    Prepared,
    RunningScp,
    assert_incoming_empty,
    by_sop_uid,
    generate_objects,
    incoming_files,
    storescu,
    wait_until,
)
from dicom_storescp import StoreScp
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode
from rawdul import EXPLICIT_LE, RawAssociation, c_store_rq
from s3server import FaultProxy, MotoS3, RefusingPort

OUT_OF_RESOURCES = 0xA700
MIB = 1024 * 1024


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log").start()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    return moto.create_bucket(f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory, base_dataset_file: Path) -> Prepared:
    """A 30 MB object: well above the 8 MiB multipart threshold (4 parts)."""
    ds = pydicom.dcmread(base_dataset_file)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Rows, ds.Columns = 3000, 5000
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelData = os.urandom(3000 * 5000 * 2)
    path = tmp_path_factory.mktemp("big") / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Prepared.from_dataset(ds, path)


def s3_scp(
    scp_factory: Callable[..., RunningScp], moto: MotoS3, bucket: str, **s3: Any
) -> RunningScp:
    """A StoreScp writing to `bucket` (spool files under its out_dir/.incoming)."""
    extra = {k: s3.pop(k) for k in list(s3) if k in ("store_with_file_meta", "verbose")}
    return scp_factory(storage_backend="S3", s3_config=moto.s3_config(bucket, **s3), **extra)


def key_of(p: Prepared, prefix: str = "") -> str:
    return f"{prefix}{p.study_instance_uid}/{p.series_instance_uid}/{p.sop_instance_uid}.dcm"


def send_with_pynetdicom(port: int, paths: list[Path]) -> list[int]:
    """One association, one C-STORE per file; the statuses answered."""
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(HOST, port, ae_title=SCP_AE)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


# --------------------------------------------------------------------------
# Bytes in the bucket
# --------------------------------------------------------------------------


@pytest.mark.parametrize("with_meta", [False, True], ids=["dataset", "file-meta"])
def test_study_from_storescu_equals_filesystem_backend(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    base_dataset_file: Path,
    corpus: dict[str, Prepared],
    tmp_path: Path,
    with_meta: bool,
) -> None:
    """The same study sent by storescu to a Filesystem and an S3 receiver:
    every object's bytes equal the file's; keys, events and URIs agree."""
    study = generate_objects(base_dataset_file, tmp_path / "study", 12)
    fs = scp_factory(store_with_file_meta=with_meta)
    s3 = s3_scp(scp_factory, moto, bucket, prefix="ingest/", store_with_file_meta=with_meta)
    for run in (fs, s3):
        storescu(run.port, [tmp_path / "study"], "+sd", "-xe")
    # plus compressed, deflated and big endian objects, each in its own syntax
    others = [corpus[n] for n in ("SC_rgb_jpeg_dcmtk.dcm", "image_dfl.dcm", "MR_small_RLE.dcm")]
    for p in others:
        for run in (fs, s3):
            storescu(run.port, [p.path], "-R", p.flag)
    sent = study + others
    fs_events = by_sop_uid(fs.log.wait_for("OnFileStored", len(sent)))
    s3_events = by_sop_uid(s3.log.wait_for("OnFileStored", len(sent)))

    keys = moto.keys(bucket)
    assert set(keys) == {key_of(p, "ingest/") for p in sent}
    for p in sent:
        fs_ev, s3_ev = fs_events[p.sop_instance_uid], s3_events[p.sop_instance_uid]
        key = key_of(p, "ingest/")
        assert s3_ev["file"] == key
        assert s3_ev["uri"] == f"s3://{bucket}/{key}"
        assert fs_ev["uri"] == Path(fs_ev["file"]).as_uri()
        expected = Path(fs_ev["file"]).read_bytes()
        assert moto.get(bucket, key) == expected, f"{p.name}: S3 object differs from the file"
        assert s3_ev["size"] == fs_ev["size"] == len(expected) == keys[key]
        for field in (
            "sop_class_uid",
            "transfer_syntax_uid",
            "study_instance_uid",
            "series_instance_uid",
            "calling_ae_title",
        ):
            assert s3_ev[field] == fs_ev[field], field
        assert s3_ev["calling_ae_title"] == DCMTK_AE
    if with_meta:
        head = moto.client().head_object(Bucket=bucket, Key=key_of(study[0], "ingest/"))
        assert head["ContentType"] == "application/dicom"
        assert pydicom.dcmread(Path(fs_events[study[0].sop_instance_uid]["file"])).SOPInstanceUID
    assert s3.log.get("OnError") == []
    assert_incoming_empty(s3.out_dir)
    assert moto.multipart_uploads(bucket) == []


def test_large_object_goes_up_in_parts_bit_exact(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    big_file: Prepared,
) -> None:
    fs = scp_factory()
    s3 = s3_scp(scp_factory, moto, bucket, part_concurrency=2)
    for run in (fs, s3):
        storescu(run.port, [big_file.path], "-xe")
    (fs_ev,) = fs.log.wait_for("OnFileStored", 1, timeout=60)
    (s3_ev,) = s3.log.wait_for("OnFileStored", 1, timeout=60)
    expected = Path(fs_ev["file"]).read_bytes()
    assert len(expected) > 30_000_000
    key = key_of(big_file)
    assert s3_ev["file"] == key and s3_ev["size"] == len(expected)
    assert moto.get(bucket, key) == expected
    # a multipart upload's ETag is "<md5 of the part md5s>-<number of parts>"
    etag = moto.client().head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-4"), f"not a 4-part multipart upload: ETag {etag}"
    assert moto.multipart_uploads(bucket) == []
    assert_incoming_empty(s3.out_dir)


def test_parallel_senders_upload_concurrently(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    base_dataset_file: Path,
    big_file: Prepared,
    tmp_path: Path,
) -> None:
    """Three associations at once, one of them sending the 30 MB object: every
    object arrives intact, nothing is left in the spool."""
    scp = s3_scp(scp_factory, moto, bucket, prefix="p/")
    batches = [generate_objects(base_dataset_file, tmp_path / f"s{i}", 15) for i in range(2)]
    results: list[list[int]] = [[], [], []]
    paths = [[p.path for p in batches[0]], [p.path for p in batches[1]], [big_file.path]]
    threads = [
        threading.Thread(
            target=lambda i=i: results[i].extend(send_with_pynetdicom(scp.port, paths[i]))
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [[0] * 15, [0] * 15, [0]]
    sent = [*batches[0], *batches[1], big_file]
    events = by_sop_uid(scp.log.wait_for("OnFileStored", len(sent)))
    keys = moto.keys(bucket, "p/")
    assert set(keys) == {key_of(p, "p/") for p in sent}
    for p in sent:
        assert keys[key_of(p, "p/")] == events[p.sop_instance_uid]["size"]
    big = moto.get(bucket, key_of(big_file, "p/"))
    assert big == encode(pydicom.dcmread(big_file.path), False, True)
    assert_incoming_empty(scp.out_dir)


# --------------------------------------------------------------------------
# Refused credentials, missing bucket, unreachable endpoint
# --------------------------------------------------------------------------


def test_wrong_secret_fails_start_clearly(moto: MotoS3, bucket: str) -> None:
    wrong = "wrong-" + moto.secret_key[6:]
    scp = StoreScp(
        port=0,
        host=HOST,
        storage_backend="S3",
        s3_config=moto.s3_config(bucket, secret_key=wrong),
    )
    with pytest.raises(OSError) as info:
        scp.start()
    message = str(info.value)
    assert bucket in message and "403" in message and "SignatureDoesNotMatch" in message, message
    assert wrong not in message and moto.secret_key not in message
    assert not scp.running


def test_missing_bucket_fails_start_clearly(moto: MotoS3) -> None:
    scp = StoreScp(
        port=0, host=HOST, storage_backend="S3", s3_config=moto.s3_config("no-such-bucket")
    )
    with pytest.raises(OSError, match=r"no-such-bucket.*NoSuchBucket"):
        scp.start()


def test_wrong_secret_with_check_skipped_fails_every_store(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    base_dataset_file: Path,
    big_file: Prepared,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="dicom_storescp")
    wrong = "wrong-" + moto.secret_key[6:]
    scp = s3_scp(scp_factory, moto, bucket, secret_key=wrong, check_on_start=False, verbose=True)
    files = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    statuses = send_with_pynetdicom(scp.port, [p.path for p in files] + [big_file.path])
    assert statuses == [OUT_OF_RESOURCES] * 4
    errors = scp.log.wait_for("OnError", 4)
    assert {e["sop_instance_uid"] for e in errors} == {
        p.sop_instance_uid for p in [*files, big_file]
    }
    for e in errors:
        assert e["status"] == OUT_OF_RESOURCES
        assert "403" in e["message"] and "SignatureDoesNotMatch" in e["message"], e["message"]
    assert scp.log.get("OnFileStored") == []
    assert moto.keys(bucket) == {}
    assert moto.multipart_uploads(bucket) == [], "the failed multipart upload was not aborted"
    assert_incoming_empty(scp.out_dir)
    # storescu sees the failure status too
    proc = storescu(scp.port, [files[0].path], "-v", "-xe", check=False)
    assert proc.returncode != 0
    assert "Refused: OutOfResources" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    scp.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "SignatureDoesNotMatch" in text
    assert wrong not in text and moto.secret_key not in text
    assert wrong not in repr(scp.scp) and wrong not in str(scp.log.get("OnError"))


def test_unreachable_endpoint(
    request: pytest.FixtureRequest,
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    base_dataset_file: Path,
    tmp_path: Path,
) -> None:
    closed = RefusingPort()
    request.addfinalizer(closed.close)
    config = moto.s3_config(bucket, endpoint=closed.endpoint, max_retries=1)
    with pytest.raises(OSError, match=r"cannot connect"):
        StoreScp(port=0, host=HOST, storage_backend="S3", s3_config=config).start()
    scp = scp_factory(storage_backend="S3", s3_config={**config, "check_on_start": False})
    files = generate_objects(base_dataset_file, tmp_path / "objs", 2)
    started = time.monotonic()
    assert send_with_pynetdicom(scp.port, [p.path for p in files]) == [OUT_OF_RESOURCES] * 2
    assert time.monotonic() - started < 10
    for e in scp.log.wait_for("OnError", 2):
        assert "cannot connect" in e["message"] and "after 2 attempts" in e["message"]
    assert_incoming_empty(scp.out_dir)


# --------------------------------------------------------------------------
# Outages, retries, aborts, backpressure
# --------------------------------------------------------------------------


def test_s3_server_stopped_mid_session_then_back(
    tmp_path: Path, base_dataset_file: Path, scp_factory: Callable[..., RunningScp]
) -> None:
    """The S3 server freezes in the middle of an association: stores fail with
    a failure status within the request timeout (x attempts); once it is back,
    the same association stores again."""
    server = MotoS3(tmp_path / "moto.log").start()
    try:
        bucket = server.create_bucket("outage")
        scp = scp_factory(
            storage_backend="S3",
            s3_config=server.s3_config(bucket, request_timeout=1.5, max_retries=1),
        )
        files = generate_objects(base_dataset_file, tmp_path / "objs", 5)
        datasets = [pydicom.dcmread(p.path) for p in files]
        ae = AE(ae_title="PYNETDICOM")
        ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate(HOST, scp.port, ae_title=SCP_AE)
        assert assoc.is_established
        try:
            assert int(assoc.send_c_store(datasets[0]).Status) == 0
            server.pause()
            for ds in datasets[1:3]:
                started = time.monotonic()
                status = int(assoc.send_c_store(ds).Status)
                elapsed = time.monotonic() - started
                assert status == OUT_OF_RESOURCES
                # two attempts of at most 1.5 s each, plus one backoff (< 0.2 s)
                assert 1.4 < elapsed < 6, f"failure answered after {elapsed:.1f}s"
            server.resume()
            for ds in datasets[3:]:
                assert int(assoc.send_c_store(ds).Status) == 0
        finally:
            server.resume()
            assoc.release()
        errors = scp.log.wait_for("OnError", 2)
        assert all("request timeout" in e["message"] for e in errors), errors
        stored = scp.log.wait_for("OnFileStored", 3)
        assert {e["sop_instance_uid"] for e in stored} == {
            files[i].sop_instance_uid for i in (0, 3, 4)
        }
        keys = server.keys(bucket)
        for i in (0, 3, 4):
            assert key_of(files[i]) in keys
        assert_incoming_empty(scp.out_dir)
    finally:
        server.stop()


def test_transient_errors_are_retried(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    big_file: Prepared,
    base_dataset_file: Path,
    tmp_path: Path,
) -> None:
    """HTTP 500 on the first attempts of a PUT and of one part: retried with
    backoff, the objects arrive intact."""
    proxy = FaultProxy(moto.port)
    failures = {"put": 2, "part": 2}

    def fault(method: str, target: str) -> int | None:
        if method != "PUT":
            return None
        kind = "part" if "partNumber=2&" in target else "put" if "?" not in target else ""
        if failures.get(kind, 0) > 0:
            failures[kind] -= 1
            return 500
        return None

    proxy.fault = fault
    try:
        scp = scp_factory(
            storage_backend="S3",
            s3_config=moto.s3_config(bucket, endpoint=proxy.endpoint, max_retries=3),
        )
        (small,) = generate_objects(base_dataset_file, tmp_path / "objs", 1)
        assert send_with_pynetdicom(scp.port, [small.path, big_file.path]) == [0, 0]
        scp.log.wait_for("OnFileStored", 2)
        assert failures == {"put": 0, "part": 0}
        assert len(proxy.requests("PUT", "partNumber=2&")) == 3
        events = by_sop_uid(scp.log.get("OnFileStored"))
        keys = moto.keys(bucket)
        for p in (small, big_file):
            assert keys[key_of(p)] == events[p.sop_instance_uid]["size"]
        assert moto.multipart_uploads(bucket) == []
    finally:
        proxy.close()


def test_failed_multipart_upload_is_aborted(
    scp_factory: Callable[..., RunningScp], moto: MotoS3, bucket: str, big_file: Prepared
) -> None:
    """A part that keeps failing: the store fails, the upload is aborted (no
    incomplete upload left in the bucket), nothing is stored."""
    proxy = FaultProxy(moto.port)
    proxy.fault = lambda method, target: 503 if "partNumber=3&" in target else None
    try:
        scp = scp_factory(
            storage_backend="S3",
            s3_config=moto.s3_config(bucket, endpoint=proxy.endpoint, max_retries=2),
        )
        assert send_with_pynetdicom(scp.port, [big_file.path]) == [OUT_OF_RESOURCES]
        (error,) = scp.log.wait_for("OnError", 1)
        assert "part 3 failed" in error["message"] and "aborted" in error["message"], error
        assert "after 3 attempts" in error["message"]
        assert len(proxy.requests("DELETE", "uploadId=")) == 1
        assert moto.multipart_uploads(bucket) == []
        assert moto.keys(bucket) == {}
        assert_incoming_empty(scp.out_dir)
    finally:
        proxy.close()


def test_slow_s3_holds_back_the_c_store_response(
    tmp_path: Path, base_dataset_file: Path, scp_factory: Callable[..., RunningScp]
) -> None:
    """Success is answered only once S3 acknowledged the object: while the
    store does not answer, the sender waits (backpressure, no buffering)."""
    server = MotoS3(tmp_path / "moto.log").start()
    try:
        bucket = server.create_bucket("slow")
        scp = scp_factory(
            storage_backend="S3", s3_config=server.s3_config(bucket, request_timeout=30)
        )
        (obj,) = generate_objects(base_dataset_file, tmp_path / "objs", 1)
        result: list[list[int]] = []
        server.pause()
        sender = threading.Thread(
            target=lambda: result.append(send_with_pynetdicom(scp.port, [obj.path]))
        )
        sender.start()
        sender.join(2.0)
        assert sender.is_alive(), "C-STORE answered while S3 had not acknowledged"
        assert scp.log.get("OnFileStored") == []
        server.resume()
        sender.join(30)
        assert result == [[0]]
        scp.log.wait_for("OnFileStored", 1)
        assert key_of(obj) in server.keys(bucket)
    finally:
        server.stop()


# --------------------------------------------------------------------------
# Spool files
# --------------------------------------------------------------------------


def test_temporary_spool_dir_without_out_dir(
    moto: MotoS3,
    bucket: str,
    big_file: Prepared,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without out_dir the spool is a private temporary directory, empty after
    every store and removed at stop()."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    log = EventLog()
    scp = StoreScp(port=0, host=HOST, storage_backend="S3", s3_config=moto.s3_config(bucket))
    scp.add_event_listener("OnFileStored", log.listener("OnFileStored"))
    scp.start()
    try:
        (spool,) = list(tmp.iterdir())
        assert spool.name.startswith("dicom-storescp-spool-")
        assert spool.stat().st_mode & 0o077 == 0, "spool directory readable by others"
        storescu(int(scp.port), [big_file.path], "-xe")
        log.wait_for("OnFileStored", 1, timeout=60)
        assert wait_until(lambda: not any(spool.iterdir()))
    finally:
        scp.stop()
    assert list(tmp.iterdir()) == []


def test_no_spool_file_left_after_abort_mid_object(
    scp_factory: Callable[..., RunningScp], moto: MotoS3, bucket: str, big_file: Prepared
) -> None:
    scp = s3_scp(scp_factory, moto, bucket)
    ds = pydicom.dcmread(big_file.path)
    data = encode(ds, False, True)
    assert data is not None
    assoc = RawAssociation(HOST, scp.port)
    assoc.associate("RAW-PEER", SCP_AE, [(1, big_file.sop_class_uid, [EXPLICIT_LE])])
    assoc.send_command(1, c_store_rq(7, big_file.sop_class_uid, big_file.sop_instance_uid))
    assoc.send_dataset(1, data, stop_after=len(data) // 2)
    assert wait_until(lambda: bool(incoming_files(scp.out_dir)), timeout=10)
    assoc.abort()
    scp.log.wait_for("OnError", 1)
    assert_incoming_empty(scp.out_dir)
    assert moto.keys(bucket) == {}
    assert moto.multipart_uploads(bucket) == []


def test_study_completed_and_tags_with_s3(
    scp_factory: Callable[..., RunningScp],
    moto: MotoS3,
    bucket: str,
    base_dataset_file: Path,
    tmp_path: Path,
) -> None:
    """Tag extraction and OnStudyCompleted work the same with the S3 backend:
    instances name their object key (`file`) and `s3://` URI."""
    run = scp_factory(
        storage_backend="S3",
        s3_config=moto.s3_config(bucket, prefix="p/"),
        extract_tags=["PatientName", "Modality", "InstanceNumber"],
        study_timeout=0.5,
    )
    objs = generate_objects(base_dataset_file, tmp_path / "objs", 3)
    storescu(run.port, [o.path for o in objs], "-xe")
    stored = by_sop_uid(run.log.wait_for("OnFileStored", 3))
    (study,) = run.log.wait_for("OnStudyCompleted", 1, timeout=15)
    (series,) = study["series"]
    assert study["tags"] == {"PatientName": str(pydicom.dcmread(objs[0].path).PatientName)}
    assert series["tags"] == {"Modality": "MR"}
    assert [i["sop_instance_uid"] for i in series["instances"]] == [
        o.sop_instance_uid for o in objs
    ]
    for inst, o in zip(series["instances"], objs):
        assert inst["file"] == key_of(o, "p/") == stored[o.sop_instance_uid]["file"]
        assert inst["uri"] == f"s3://{bucket}/{key_of(o, 'p/')}"
        assert inst["tags"] == {"InstanceNumber": stored[o.sop_instance_uid]["tags"]["instance"][
            "InstanceNumber"
        ]}  # fmt: skip
