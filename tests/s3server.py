"""A real S3-compatible server for the tests: moto's server, run as a separate
process on 127.0.0.1, with AWS Signature V4 checking switched on.

moto accepts any credentials unless ``INITIAL_NO_AUTH_ACTION_COUNT`` is set:
then the first N requests are free and every later one must be signed with a
key of an IAM user that moto knows and whose policy allows the action. The
three free requests create such a user, its access key and its policy; from
then on a wrong secret key gets HTTP 403.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

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
        try:
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        return self

    def _bootstrap(self) -> None:
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
        iam.put_user_policy(UserName="dicom-storescp", PolicyName="all", PolicyDocument=_POLICY)
        self.access_key = key["AccessKeyId"]
        self.secret_key = key["SecretAccessKey"]

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
        # filtered here: moto checks the signature of a '/' in a query
        # parameter differently from how clients sign it
        for page in paginator.paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Key"].startswith(prefix):
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


_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>fault injected by the test proxy</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}

#: decides, per request, an HTTP status to answer instead of the server (None: forward)
Fault = Callable[[str, str], Optional[int]]


class RefusingPort:
    """A loopback port where every connection is refused, for as long as the
    object lives: the socket is bound but never listens, so the kernel answers
    SYN with RST and no other listener (a receiver of the same test run, say)
    can be given the port meanwhile."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self.port = int(self._sock.getsockname()[1])

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()


class FaultProxy:
    """An HTTP/1.1 forwarder in front of the S3 server that can answer chosen
    requests with an error instead, or stop accepting connections.

    Requests are passed on byte for byte (the Host header included), so AWS
    signatures stay valid.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fault: Optional[Fault] = None
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def requests(self, method: str, contains: str = "") -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.log if r[0] == method and contains in r[1]]

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone
        # would leave the socket listening until that call returns.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            for c in self._conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = http.client.HTTPConnection(HOST, self.upstream_port, timeout=120)
        reader = conn.makefile("rb")
        try:
            while True:
                request_line = reader.readline(65536)
                if not request_line:
                    return
                method, target, _ = request_line.decode("latin-1").split(" ", 2)
                headers: list[tuple[str, str]] = []
                length = 0
                while True:
                    line = reader.readline(65536).decode("latin-1")
                    if line in ("\r\n", "\n", ""):
                        break
                    name, _, value = line.partition(":")
                    headers.append((name.strip(), value.strip()))
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = reader.read(length) if length else b""
                status = self.fault(method, target) if self.fault else None
                if status is not None:
                    payload = b"" if method == "HEAD" else _ERROR_BODY
                    conn.sendall(
                        f"HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\n"
                        f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                    with self._lock:
                        self.log.append((method, target, status))
                    continue
                upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    upstream.putheader(name, value)
                upstream.endheaders(body if body else None)
                response = upstream.getresponse()
                data = response.read()
                out = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        out.append(f"{name}: {value}\r\n")
                if method == "HEAD":
                    clen = response.getheader("Content-Length", "0")
                    out.append(f"Content-Length: {clen}\r\n\r\n")
                    data = b""
                else:
                    out.append(f"Content-Length: {len(data)}\r\n\r\n")
                conn.sendall("".join(out).encode("latin-1") + data)
                with self._lock:
                    self.log.append((method, target, response.status))
        except (OSError, ValueError, http.client.HTTPException):
            return
        finally:
            upstream.close()
            with contextlib.suppress(OSError):
                conn.close()
