"""A minimal DICOM upper layer client over a raw socket, for misbehaving-peer tests.

Builds A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE-RQ and A-ABORT PDUs by hand (PS3.8
section 9.3) so that a test can stop anywhere in the middle of an object.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _ae(value: str) -> bytes:
    return value.encode("ascii").ljust(16, b" ")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _pdu(pdu_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(payload)) + payload


def associate_rq(
    calling: str, called: str, contexts: list[tuple[int, str, list[str]]], max_pdu: int = 16384
) -> bytes:
    body = struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + b"\x00" * 32
    body += _item(0x10, APPLICATION_CONTEXT.encode("ascii"))
    for pc_id, abstract, transfers in contexts:
        pc = struct.pack(">BBBB", pc_id, 0, 0, 0) + _item(0x30, abstract.encode("ascii"))
        for ts in transfers:
            pc += _item(0x40, ts.encode("ascii"))
        body += _item(0x20, pc)
    user = _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, IMPLEMENTATION_CLASS_UID.encode("ascii"))
    user += _item(0x55, b"RAWDUL_TEST")
    body += _item(0x50, user)
    return _pdu(0x01, body)


def p_data(pc_id: int, data: bytes, *, command: bool, last: bool) -> bytes:
    flags = (0x01 if command else 0) | (0x02 if last else 0)
    pdv = struct.pack(">IBB", len(data) + 2, pc_id, flags) + data
    return _pdu(0x04, pdv)


RELEASE_RQ = _pdu(0x05, b"\x00\x00\x00\x00")
ABORT = _pdu(0x07, b"\x00\x00\x00\x00")


def _element(group: int, elem: int, value: bytes) -> bytes:
    """Implicit VR little endian element (command sets are always encoded so)."""
    return struct.pack("<HHI", group, elem, len(value)) + value


def c_store_rq(msg_id: int, sop_class: str, sop_instance: str) -> bytes:
    body = _element(0x0000, 0x0002, _uid(sop_class))
    body += _element(0x0000, 0x0100, struct.pack("<H", 0x0001))
    body += _element(0x0000, 0x0110, struct.pack("<H", msg_id))
    body += _element(0x0000, 0x0700, struct.pack("<H", 0))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0000))
    body += _element(0x0000, 0x1000, _uid(sop_instance))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def parse_command(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        out[(group << 16) | elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


@dataclass
class Accepted:
    pc_id: int
    transfer_syntax: str


def c_echo_rq(msg_id: int) -> bytes:
    body = _element(0x0000, 0x0002, _uid("1.2.840.10008.1.1"))
    body += _element(0x0000, 0x0100, struct.pack("<H", 0x0030))
    body += _element(0x0000, 0x0110, struct.pack("<H", msg_id))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


class RawAssociation:
    def __init__(
        self, host: str, port: int, timeout: float = 10.0, rcvbuf: int | None = None
    ) -> None:
        if rcvbuf is None:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        else:
            # a small receive buffer, set before connecting (the window)
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.peer_max_pdu = 0
        self.accepted: dict[int, Accepted] = {}

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError(f"peer closed the connection ({len(buf)}/{n} bytes)")
            buf += chunk
        return buf

    def read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBI", self._recv_exact(6))
        return pdu_type, self._recv_exact(length)

    def associate(
        self, calling: str, called: str, contexts: list[tuple[int, str, list[str]]]
    ) -> None:
        self.sock.sendall(associate_rq(calling, called, contexts))
        pdu_type, body = self.read_pdu()
        if pdu_type != 0x02:
            raise AssertionError(f"association not accepted: PDU type {pdu_type:#x} {body!r}")
        pos = 68
        while pos + 4 <= len(body):
            item_type, _, length = struct.unpack_from(">BBH", body, pos)
            payload = body[pos + 4 : pos + 4 + length]
            if item_type == 0x21:
                pc_id, result = payload[0], payload[2]
                if result == 0:
                    ts = payload[4 + 4 : 4 + 4 + struct.unpack_from(">H", payload, 6)[0]]
                    self.accepted[pc_id] = Accepted(pc_id, ts.decode("ascii").rstrip("\x00 "))
            elif item_type == 0x50:
                sub = 0
                while sub + 4 <= len(payload):
                    st, _, sl = struct.unpack_from(">BBH", payload, sub)
                    if st == 0x51:
                        (self.peer_max_pdu,) = struct.unpack_from(">I", payload, sub + 4)
                    sub += 4 + sl
            pos += 4 + length

    def fragment_size(self) -> int:
        limit = self.peer_max_pdu or 16384
        return min(limit, 16384) - 6

    def send_command(self, pc_id: int, command: bytes) -> None:
        self.sock.sendall(p_data(pc_id, command, command=True, last=True))

    def send_dataset(self, pc_id: int, data: bytes, *, stop_after: int | None = None) -> int:
        """Send `data` in PDV fragments; with stop_after, send only that many bytes
        (never the last fragment). Returns the number of bytes sent."""
        size = self.fragment_size()
        sent = 0
        while sent < len(data):
            chunk = data[sent : sent + size]
            last = sent + len(chunk) == len(data)
            if stop_after is not None and (sent + len(chunk) >= stop_after or last):
                break
            self.sock.sendall(p_data(pc_id, chunk, command=False, last=last))
            sent += len(chunk)
        return sent

    def read_response(self) -> dict[int, bytes]:
        command = b""
        while True:
            pdu_type, body = self.read_pdu()
            if pdu_type != 0x04:
                raise AssertionError(f"expected P-DATA-TF, got PDU type {pdu_type:#x}")
            pos = 0
            while pos + 6 <= len(body):
                length, _pc, flags = struct.unpack_from(">IBB", body, pos)
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if flags & 0x03 == 0x03:
                    return parse_command(command)

    def release(self) -> int:
        self.sock.sendall(RELEASE_RQ)
        pdu_type, _ = self.read_pdu()
        self.close()
        return pdu_type

    def abort(self) -> None:
        self.sock.sendall(ABORT)
        self.close()
