"""``storage_backend="S3"`` options: validation, environment fallbacks, secrets,
and the command line's --s3-* flags (against moto)."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HOST, Prepared, free_port, storescu
from dicom_storescp import StoreScp
from s3server import MotoS3
from test_cli import Cli

SECRET = "s3cr3t-SHOULD-NEVER-BE-SHOWN"
TOKEN = "t0ken-SHOULD-NEVER-BE-SHOWN"
AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)


def make(**s3: Any) -> StoreScp:
    config: dict[str, Any] = {"bucket": "dicom", "access_key": "AKID", "secret_key": SECRET}
    config.update(s3)
    return StoreScp(port=0, host=HOST, storage_backend="S3", s3_config=config)  # type: ignore[typeddict-item]


def resolved(scp: StoreScp) -> dict[str, Any]:
    return dict(scp._options["s3"])


def test_defaults_and_out_dir_optional() -> None:
    scp = make()
    s3 = resolved(scp)
    assert s3["region"] == "us-east-1"
    assert s3["endpoint"] is None
    assert s3["path_style"] is False  # AWS: virtual-host addressing
    assert s3["check_on_start"] is True
    assert s3["prefix"] == ""
    assert (s3["part_size"], s3["multipart_threshold"]) == (8 << 20, 8 << 20)
    assert scp._options["out_dir"] is None
    assert resolved(make(endpoint="http://minio:9000"))["path_style"] is True
    assert resolved(make(endpoint="http://minio:9000", path_style=False))["path_style"] is False


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.org")
    scp = StoreScp(port=0, host=HOST, storage_backend="S3", s3_config={"bucket": "dicom"})
    s3 = resolved(scp)
    assert s3["access_key"] == "AKIDENV"
    assert s3["secret_key"] == s3["session_token"] == "***"  # kept only by the core
    assert s3["region"] == "eu-central-1"
    assert s3["endpoint"] == "https://s3.example.org"
    # explicit keys win, and then the environment's session token is not mixed in
    s3 = resolved(make(region="us-west-2", endpoint="http://127.0.0.1:9000"))
    assert s3["access_key"] == "AKID" and s3["session_token"] is None
    assert s3["region"] == "us-west-2" and s3["endpoint"] == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("s3", "pattern"),
    [
        ({"bucket": None}, r"s3_config bucket"),
        ({"bucket": "a/b"}, r"s3_config bucket"),
        ({"prefix": "/abs/"}, r"s3_config prefix"),
        ({"prefix": "a+b/"}, r"s3_config prefix"),
        ({"region": "eu west"}, r"s3_config region"),
        ({"endpoint": "minio:9000"}, r"s3_config endpoint"),
        ({"endpoint": "http://minio:9000/path"}, r"s3_config endpoint"),
        ({"access_key": ""}, r"s3_config access_key"),
        ({"secret_key": 42}, r"s3_config secret_key"),
        ({"part_size": 1024}, r"s3_config part_size"),
        ({"multipart_threshold": 1 << 40}, r"s3_config multipart_threshold"),
        ({"part_concurrency": 0}, r"s3_config part_concurrency"),
        ({"request_timeout": 0}, r"s3_config request_timeout"),
        ({"max_retries": -1}, r"s3_config max_retries"),
        ({"path_style": "yes"}, r"s3_config path_style"),
        ({"check_on_start": 1}, r"s3_config check_on_start"),
        ({"colour": "blue"}, r"s3_config.*unknown.*colour"),
    ],
)
def test_bad_s3_config_names_the_key(s3: dict[str, Any], pattern: str) -> None:
    config = {k: v for k, v in s3.items() if v is not None}
    with pytest.raises(ValueError, match=pattern) as info:
        if s3.get("bucket", "") is None:
            StoreScp(
                port=0,
                host=HOST,
                storage_backend="S3",
                s3_config={"access_key": "AKID", "secret_key": SECRET},  # type: ignore[typeddict-item]
            )
        else:
            make(**config)
    assert SECRET not in str(info.value)


def test_other_backend_mistakes() -> None:
    with pytest.raises(ValueError, match=r"s3_config.*bucket"):
        StoreScp(port=0, host=HOST, storage_backend="S3")
    with pytest.raises(ValueError, match=r"s3_config.*'S3'"):
        StoreScp(port=0, out_dir="x", host=HOST, s3_config={"bucket": "dicom"})
    with pytest.raises(ValueError, match=r"access_key.*AWS_ACCESS_KEY_ID"):
        StoreScp(port=0, host=HOST, storage_backend="S3", s3_config={"bucket": "dicom"})
    with pytest.raises(ValueError, match=r"out_dir"):
        StoreScp(port=0, host=HOST)


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    scp = make(session_token=TOKEN, endpoint="http://127.0.0.1:1", max_retries=0)
    for text in (repr(scp), str(scp._options)):
        assert SECRET not in text and TOKEN not in text
    assert "s3://dicom/" in repr(scp)
    with pytest.raises(OSError) as info:
        scp.start()
    assert "cannot connect" in str(info.value)
    assert SECRET not in str(info.value) and TOKEN not in str(info.value)
    with pytest.raises(ValueError) as bad:
        make(endpoint=f"http://user:{SECRET}@host")
    assert SECRET not in str(bad.value)


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto-cli") / "moto.log").start()
    yield server
    server.stop()


def test_cli_s3_flags_secret_from_environment(
    moto_cli: MotoS3, corpus: dict[str, Prepared], tmp_path: Path
) -> None:
    bucket = moto_cli.create_bucket(f"cli-{uuid.uuid4().hex[:8]}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_SECRET_ACCESS_KEY"] = moto_cli.secret_key
    argv = [
        sys.executable, "-m", "dicom_storescp", "--port", str(port), "--host", HOST, "--json",
        "--s3-bucket", bucket, "--s3-prefix", "cli/", "--s3-endpoint", moto_cli.endpoint,
        "--s3-region", "us-east-1", "--s3-access-key", moto_cli.access_key, "--s3-path-style",
        "--s3-part-size", "5MiB", "--s3-multipart-threshold", "6M", "--s3-part-concurrency", "2",
        "--s3-request-timeout", "20", "--s3-max-retries", "2", "--verbose",
    ]  # fmt: skip
    cli = Cli(argv, env=env)
    try:
        cli.wait_listening(port)
        p = corpus["CT_small.dcm"]
        storescu(port, [p.path], "-R", p.flag)
        deadline = time.monotonic() + 15
        while True:
            event = json.loads(cli.read_line(max(0.1, deadline - time.monotonic())))
            if event["event"] == "OnFileStored":
                break
        key = f"cli/{p.study_instance_uid}/{p.series_instance_uid}/{p.sop_instance_uid}.dcm"
        assert event["file"] == key
        assert event["uri"] == f"s3://{bucket}/{key}"
        assert moto_cli.keys(bucket) == {key: event["size"]}
        assert cli.interrupt() == 0
    finally:
        cli.kill()
    assert moto_cli.secret_key not in "".join(cli.stderr)


def test_cli_secret_key_file_and_start_failure(moto_cli: MotoS3, tmp_path: Path) -> None:
    bucket = moto_cli.create_bucket(f"cli-{uuid.uuid4().hex[:8]}")
    secret_file = tmp_path / "secret"
    secret_file.write_text("wrong-" + moto_cli.secret_key + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base = [
        sys.executable, "-m", "dicom_storescp", "--port", "0", "--host", HOST,
        "--s3-bucket", bucket, "--s3-endpoint", moto_cli.endpoint,
        "--s3-access-key", moto_cli.access_key,
    ]  # fmt: skip
    proc = Cli([*base, "--s3-secret-key-file", str(secret_file)], env=env)
    assert proc.proc.wait(30) == 1
    err = "".join(proc.stderr) if proc.stderr else ""
    deadline = time.monotonic() + 5
    while "SignatureDoesNotMatch" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err = "".join(proc.stderr)
    assert "SignatureDoesNotMatch" in err, err
    assert moto_cli.secret_key not in err
    # no secret at all: a usage error naming the fallback
    proc = Cli(base, env=env)
    assert proc.proc.wait(30) == 1
    time.sleep(0.2)
    assert "AWS_SECRET_ACCESS_KEY" in "".join(proc.stderr)
