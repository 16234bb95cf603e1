"""Write the small seed corpora of the fuzz targets (run from the repo root:
python fuzz/make_seeds.py). Seeds are valid conversations and data sets the
fuzzer mutates from; they are tiny and committed."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from rawdul import RELEASE_RQ, associate_rq, c_store_rq, p_data  # noqa: E402

ROOT = Path(__file__).resolve().parent / "corpus"
SC = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", len(value)) + value


def implicit(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def dataset() -> bytes:
    return (
        explicit(0x0008, 0x0005, b"CS", b"ISO_IR 192")
        + explicit(0x0008, 0x0016, b"UI", SC.encode() + b"\0")
        + explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0")
        + explicit(0x0010, 0x0010, b"PN", "Dürer^Albrecht".encode())
        + explicit(0x0020, 0x000D, b"UI", b"1.2\0")
        + explicit(0x0020, 0x000E, b"UI", b"1.2.3\0")
    )


def echo_rq(msg_id: int) -> bytes:
    body = implicit(0x0000, 0x0002, b"1.2.840.10008.1.1\0")
    body += implicit(0x0000, 0x0100, struct.pack("<H", 0x0030))
    body += implicit(0x0000, 0x0110, struct.pack("<H", msg_id))
    body += implicit(0x0000, 0x0800, struct.pack("<H", 0x0101))
    return implicit(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def main() -> None:
    ds = dataset()
    conversation = (
        associate_rq("FUZZ", "STORE-SCP", [(1, "1.2.840.10008.1.1", [IMPLICIT]), (3, SC, [EXPLICIT])])
        + p_data(1, echo_rq(5), command=True, last=True)
        + p_data(3, c_store_rq(6, SC, "1.2.3.4"), command=True, last=True)
        + p_data(3, ds[:20], command=False, last=False)
        + p_data(3, ds[20:], command=False, last=True)
        + RELEASE_RQ
    )
    seeds = {
        "association/store": conversation,
        "association/echo": associate_rq("FUZZ", "ANY", [(1, "1.2.840.10008.1.1", [IMPLICIT])])
        + p_data(1, echo_rq(1), command=True, last=True),
        "header/explicit": b"\x01" + ds,
        "header/implicit": b"\x00"
        + implicit(0x0008, 0x0018, b"1.2.3.4\0")
        + implicit(0x0020, 0x000D, b"1.2\0"),
        "dimse/store": p_data(3, c_store_rq(6, SC, "1.2.3.4"), command=True, last=True)[6:],
        "dimse/echo": p_data(1, echo_rq(9), command=True, last=True)[6:],
    }
    for name, data in seeds.items():
        path = ROOT / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{path} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
