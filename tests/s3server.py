"""A real S3-compatible server for the tests: moto's server, run as a separate
process on 127.0.0.1, with AWS Signature V4 checking switched on.

moto accepts any credentials unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set:
then the first N requests are free and every later one must be signed with a
key of an IAM user that moto knows and whose policy allows the action. The
three free requests create such a user, its access key and its policy; from
then on a wrong secret key gets HTTP 403.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import boto3
from botocore.config import Config

HOST = "127.0.0.1"
REGION = "us-east-1"

_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class MotoS3:
    """One moto server process with one IAM user (``access_key``/``secret_key``)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.access_key = ""
        self.secret_key = ""

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> MotoS3:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AWS_") and not k.startswith("MOTO_")
        }
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._wait_ready()
        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="dicom-storescp")
        key = iam.create_access_key(UserName="dicom-storescp")["AccessKey"]
        iam.put_user_policy(
            UserName="dicom-storescp", PolicyName="all", PolicyDocument=_POLICY
        )
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto server exited with {self.proc.returncode}: "
                    f"{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"moto server not listening on {self.endpoint} after {timeout}s")

    def client(self, secret_key: Optional[str] = None) -> Any:
        """A boto3 S3 client signed with the IAM user's key (or another secret)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def s3_config(self, bucket: str, **overrides: Any) -> dict[str, Any]:
        """``s3_config`` for StoreScp pointing at this server."""
        config: dict[str, Any] = {
            "bucket": bucket,
            "endpoint": self.endpoint,
            "region": REGION,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "path_style": True,
        }
        config.update(overrides)
        return config

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` with its size."""
        out: dict[str, int] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def get(self, bucket: str, key: str) -> bytes:
        body = self.client().get_object(Bucket=bucket, Key=key)["Body"]
        return bytes(body.read())

    def multipart_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Multipart uploads started and neither completed nor aborted."""
        return list(self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def pause(self) -> None:
        """Freeze the server process: connections are accepted by the kernel but
        nothing answers (like a hung or unreachable store)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
