"""Command line: ``dicom-storescp --port 11112 --out-dir ./dicom-storage``.

Options come from flags, or from a TOML file (``--config FILE``) whose keys
are the ``StoreScp`` keywords; flags given on the command line win.

Exit codes: 0 after a graceful stop (Ctrl-C / SIGTERM), 1 when the receiver
cannot start (an option value it refuses, port in use, directory not
writable, unreadable TLS or secret file), 2 for bad usage (unknown flag,
malformed value, unreadable or invalid config file, unknown config key).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, Callable, Optional, TextIO, cast

from . import __version__
from ._scp import EVENT_NAMES, StoreScp
from ._types import S3Config, Stats, StorageBackend


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _custom_tag(value: str) -> dict[str, str]:
    """``TAG=NAME`` or ``TAG@PRIVATE CREATOR=NAME``."""
    spec, sep, name = value.rpartition("=")
    if not sep or not spec or not name:
        raise argparse.ArgumentTypeError(f"expected TAG=NAME, got {value!r}")
    tag, at, creator = spec.partition("@")
    out = {"tag": tag.strip(), "name": name.strip()}
    if at:
        out["private_creator"] = creator.strip()
    return out


def _custom_group(value: str) -> tuple[str, list[str]]:
    """``NAME=Keyword,Keyword``."""
    name, sep, members = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=Keyword,Keyword, got {value!r}")
    return name.strip(), _csv(members)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not 0 < seconds < 1e9:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {value}")
    return seconds


def _seconds_or_none(value: str) -> Optional[float]:
    if value.lower() in ("none", "0", "off"):
        return None
    return float(value)


_SIZE_UNITS = {
    "": 1,
    "K": 1024,
    "KI": 1024,
    "M": 1024**2,
    "MI": 1024**2,
    "G": 1024**3,
    "GI": 1024**3,
}


def _size(value: str) -> int:
    """Bytes, with an optional binary unit: 8388608, 8M, 8MiB."""
    text = value.strip().upper().removesuffix("B")
    digits = text.rstrip("KMGI")
    unit = text[len(digits) :]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {value!r} (e.g. 8388608, 8M, 8MiB)")
    return int(digits) * _SIZE_UNITS[unit]


def _read_secret(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ValueError(f"{flag}: cannot read {path}: {e.strerror}") from None


EXIT_CODES = """exit codes:
  0  stopped gracefully (Ctrl-C or SIGTERM)
  1  the receiver cannot start (an option value it refuses, port in use,
     directory not writable, unreadable TLS or secret file)
  2  bad usage (unknown flag, malformed value, bad --config file or key)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dicom-storescp",
        description="Receive DICOM objects (C-STORE SCP) and store them.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"dicom-storescp {__version__}")
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file: keys are the StoreScp keywords (port, out_dir, "
        "extract_tags, [s3_config], ...) plus json and stats_interval; flags override it",
    )
    net = p.add_argument_group("network")
    net.add_argument("--port", type=int, default=None, help="TCP port (0 = any free port)")
    net.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    net.add_argument("--ae-title", default="STORE-SCP", help="this SCP's AE title")
    net.add_argument(
        "--max-pdu-length",
        type=int,
        default=16384,
        metavar="BYTES",
        help="largest PDU we accept (4096 to 16 MiB, default 16384)",
    )
    net.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reject PDUs over the maximum",
    )
    net.add_argument(
        "--max-associations",
        type=int,
        default=100,
        metavar="N",
        help="concurrent associations; more are rejected (default 100)",
    )
    net.add_argument(
        "--acse-timeout",
        type=_seconds_or_none,
        default=30.0,
        metavar="SECONDS",
        help="time to send the association request (default 30; 'none': no limit)",
    )
    net.add_argument(
        "--dimse-timeout",
        type=_seconds_or_none,
        default=60.0,
        metavar="SECONDS",
        help="time between PDUs of a message (default 60; 'none': no limit)",
    )
    net.add_argument(
        "--idle-timeout",
        type=_seconds_or_none,
        default=300.0,
        metavar="SECONDS",
        help="an idle association is aborted after this (default 300; 'none': no limit)",
    )
    net.add_argument(
        "--allowed-calling-ae-titles",
        type=_csv,
        default=None,
        metavar="AE,AE",
        help="only accept these calling AE titles",
    )
    net.add_argument(
        "--require-called-ae-title",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reject associations whose called AE title is not --ae-title",
    )
    tls = p.add_argument_group("TLS (DICOM PS3.15 Annex B)")
    tls.add_argument("--tls-cert", default=None, metavar="PEM", help="server certificate chain")
    tls.add_argument("--tls-key", default=None, metavar="PEM", help="server private key")
    tls.add_argument(
        "--tls-ca", default=None, metavar="PEM", help="require client certificates from this CA"
    )
    neg = p.add_argument_group("negotiation")
    neg.add_argument(
        "--abstract-syntax-mode",
        default="AllStorage",
        choices=["AllStorage", "All", "Custom"],
        help="SOP classes accepted: every Storage class (default), anything, or the list below",
    )
    neg.add_argument(
        "--abstract-syntaxes",
        type=_csv,
        default=[],
        metavar="NAME,UID",
        help="SOP classes of the Custom mode (CTImageStorage, ... or UIDs)",
    )
    neg.add_argument(
        "--transfer-syntax-mode",
        default="All",
        choices=["All", "UncompressedOnly", "Custom"],
        help="transfer syntaxes accepted (default All)",
    )
    neg.add_argument(
        "--transfer-syntaxes",
        type=_csv,
        default=[],
        metavar="NAME,UID",
        help="transfer syntaxes of the Custom mode (JPEGBaseline, ... or UIDs)",
    )
    st = p.add_argument_group("storage")
    st.add_argument(
        "--storage-backend",
        choices=["Filesystem", "S3"],
        default=None,
        help="Filesystem (default) or S3 (the default when --s3-bucket is given)",
    )
    st.add_argument(
        "--out-dir",
        default=None,
        help="where files are stored (Filesystem, default ./dicom-storage); with S3, where "
        "objects are spooled while they arrive (default: a temporary directory)",
    )
    st.add_argument(
        "--store-with-file-meta",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write Part-10 files",
    )
    s3 = p.add_argument_group(
        "S3 storage",
        "Credentials, region and endpoint default to AWS_ACCESS_KEY_ID,\n"
        "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and AWS_ENDPOINT_URL from\n"
        "the environment. Secrets are never taken as command-line values (visible to\n"
        "every user of the machine): use the environment or the *-file flags.",
    )
    s3.add_argument("--s3-bucket", help="bucket name (selects the S3 backend)")
    s3.add_argument("--s3-prefix", default="", help="key prefix, e.g. 'incoming/'")
    s3.add_argument("--s3-region", help="region (default: $AWS_REGION or us-east-1)")
    s3.add_argument(
        "--s3-endpoint", help="http(s)://host:port of an S3-compatible server (MinIO, Ceph)"
    )
    s3.add_argument("--s3-access-key", help="access key id (default: $AWS_ACCESS_KEY_ID)")
    s3.add_argument(
        "--s3-secret-key-file",
        metavar="PATH",
        help="read the secret key from this file (default: $AWS_SECRET_ACCESS_KEY)",
    )
    s3.add_argument(
        "--s3-session-token-file",
        metavar="PATH",
        help="read a session token from this file (default: $AWS_SESSION_TOKEN)",
    )
    style = s3.add_mutually_exclusive_group()
    style.add_argument(
        "--s3-path-style",
        dest="s3_path_style",
        action="store_const",
        const=True,
        default=None,
        help="address the bucket by path: endpoint/bucket/key (default with --s3-endpoint)",
    )
    style.add_argument(
        "--s3-virtual-host",
        dest="s3_path_style",
        action="store_const",
        const=False,
        help="address the bucket by host name: bucket.endpoint/key (default for AWS)",
    )
    s3.add_argument(
        "--s3-no-check",
        action="store_true",
        default=None,
        help="do not check the bucket and credentials at start",
    )
    s3.add_argument("--s3-part-size", type=_size, metavar="BYTES", help="default 8MiB")
    s3.add_argument(
        "--s3-multipart-threshold",
        type=_size,
        metavar="BYTES",
        help="larger objects go up in parts (default 8MiB)",
    )
    s3.add_argument("--s3-part-concurrency", type=int, metavar="N", help="default 4")
    s3.add_argument("--s3-request-timeout", type=float, metavar="SECONDS", help="default 60")
    s3.add_argument("--s3-max-retries", type=int, metavar="N", help="default 3")
    tags = p.add_argument_group("tag extraction and study completion")
    tags.add_argument(
        "--extract-tags",
        type=_csv,
        default=[],
        metavar="KW,TAG",
        help="attributes to extract: keywords (PatientName) or 8-hex tags (00100010)",
    )
    tags.add_argument(
        "--extract-custom-tag",
        type=_custom_tag,
        action="append",
        default=[],
        metavar="TAG=NAME",
        help="extract a tag under a name of your own; TAG@PRIVATE CREATOR=NAME finds a "
        "private tag's block through its creator (repeatable)",
    )
    tags.add_argument(
        "--grouping",
        default="ByScope",
        choices=["ByScope", "Flat", "StudyLevel", "Custom"],
        help="how extracted tags are grouped in events (default ByScope)",
    )
    tags.add_argument(
        "--custom-group",
        type=_custom_group,
        action="append",
        default=[],
        metavar="NAME=KW,KW",
        help="a group of the Custom grouping (repeatable)",
    )
    tags.add_argument(
        "--study-timeout",
        type=_positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a study is complete after this many seconds without a new instance (default 30)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--json",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="print every event as one JSON object per line",
    )
    out.add_argument(
        "--verbose",
        "-v",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log associations and files (INFO)",
    )
    out.add_argument(
        "--stats-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="print a one-line summary to stderr this often (0 = never; default 60);"
        " a final summary is always printed on exit",
    )
    return p


# --config: TOML keys (the StoreScp keywords, plus the CLI's own output
# options) -> (argparse dest, kind of value).
_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "port": ("port", "int"),
    "host": ("host", "str"),
    "ae_title": ("ae_title", "str"),
    "max_pdu_length": ("max_pdu_length", "int"),
    "strict": ("strict", "bool"),
    "max_associations": ("max_associations", "int"),
    "acse_timeout": ("acse_timeout", "timeout"),
    "dimse_timeout": ("dimse_timeout", "timeout"),
    "idle_timeout": ("idle_timeout", "timeout"),
    "allowed_calling_ae_titles": ("allowed_calling_ae_titles", "strlist"),
    "require_called_ae_title": ("require_called_ae_title", "bool"),
    "tls_cert": ("tls_cert", "str"),
    "tls_key": ("tls_key", "str"),
    "tls_ca": ("tls_ca", "str"),
    "abstract_syntax_mode": ("abstract_syntax_mode", "str"),
    "abstract_syntaxes": ("abstract_syntaxes", "strlist"),
    "transfer_syntax_mode": ("transfer_syntax_mode", "str"),
    "transfer_syntaxes": ("transfer_syntaxes", "strlist"),
    "storage_backend": ("storage_backend", "str"),
    "out_dir": ("out_dir", "str"),
    "store_with_file_meta": ("store_with_file_meta", "bool"),
    "extract_tags": ("extract_tags", "strlist"),
    "extract_custom_tags": ("extract_custom_tag", "custom_tags"),
    "grouping_strategy": ("grouping", "str"),
    "custom_groups": ("custom_group", "custom_groups"),
    "study_timeout": ("study_timeout", "seconds"),
    "verbose": ("verbose", "bool"),
    "json": ("json", "bool"),
    "stats_interval": ("stats_interval", "number"),
    "s3_config": ("", "s3"),
}
_S3_CONFIG_KEYS: dict[str, tuple[str, str]] = {
    "bucket": ("s3_bucket", "str"),
    "prefix": ("s3_prefix", "str"),
    "region": ("s3_region", "str"),
    "endpoint": ("s3_endpoint", "str"),
    "access_key": ("s3_access_key", "str"),
    "secret_key_file": ("s3_secret_key_file", "str"),
    "session_token_file": ("s3_session_token_file", "str"),
    "path_style": ("s3_path_style", "bool"),
    "check_on_start": ("s3_no_check", "not_bool"),
    "part_size": ("s3_part_size", "size"),
    "multipart_threshold": ("s3_multipart_threshold", "size"),
    "part_concurrency": ("s3_part_concurrency", "int"),
    "request_timeout": ("s3_request_timeout", "seconds"),
    "max_retries": ("s3_max_retries", "int"),
}
#: repeatable flags: values on the command line replace the file's list
_APPENDED = ("extract_custom_tag", "custom_group")


class ConfigError(Exception):
    """A --config file that cannot be used (exit code 2)."""


def _toml_module() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.9/3.10
        import tomli  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # pragma: no cover
        raise ConfigError("reading a TOML file needs Python 3.11+ or the 'tomli' package") from None
    return tomli  # pragma: no cover


def _load_toml(path: str) -> dict[str, Any]:
    toml = _toml_module()
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = toml.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except toml.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return data


def _config_value(key: str, kind: str, value: object) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key} must be {expected}, not {value!r}")

    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if kind in ("bool", "not_bool"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value if kind == "bool" else not value
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return value
    if kind == "timeout":
        if value is False or (isinstance(value, str) and value.lower() in ("none", "off")):
            return None
        if not is_number or not 0 <= cast(float, value) < 1e9:
            raise bad('a number of seconds (0, "none" or false: no limit)')
        return None if value == 0 else float(cast(float, value))
    if kind in ("seconds", "number"):
        number = cast(float, value) if is_number else -1.0
        if not (number > 0 if kind == "seconds" else number >= 0):
            raise bad("a positive number of seconds" if kind == "seconds" else "a number >= 0")
        return float(number)
    if kind == "size":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return _size(value)
            except argparse.ArgumentTypeError:
                pass
        raise bad('a size in bytes (8388608, "8M" or "8MiB")')
    if kind == "custom_tags":
        if not isinstance(value, list) or not all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in value
        ):
            raise bad('a list of tables like {tag = "00091001", name = "CustomField"}')
        return [dict(v) for v in value]
    if kind == "custom_groups":
        if not isinstance(value, dict) or not all(
            isinstance(m, list) and all(isinstance(x, str) for x in m) for m in value.values()
        ):
            raise bad('a table like {who = ["PatientName", "PatientID"]}')
        return [(str(name), list(members)) for name, members in value.items()]
    raise AssertionError(kind)  # pragma: no cover


def load_config(path: str) -> dict[str, Any]:
    """The argparse defaults a TOML config file sets (``ConfigError`` naming
    the file and the key if anything is wrong)."""
    data = _load_toml(path)
    out: dict[str, Any] = {}
    try:
        for key, value in data.items():
            if key not in _CONFIG_KEYS:
                raise ConfigError(f"unknown key {key!r} (known: {', '.join(sorted(_CONFIG_KEYS))})")
            dest, kind = _CONFIG_KEYS[key]
            if kind != "s3":
                out[dest] = _config_value(key, kind, value)
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"s3_config must be a table ([s3_config]), not {value!r}")
            for s3_key, s3_value in value.items():
                name = f"s3_config.{s3_key}"
                if s3_key in ("secret_key", "session_token"):
                    raise ConfigError(
                        f"{name}: put the secret in a file of its own and name it with "
                        f"{s3_key}_file (or use the AWS_* environment variables)"
                    )
                if s3_key not in _S3_CONFIG_KEYS:
                    raise ConfigError(
                        f"unknown key {name!r} (known: "
                        f"{', '.join('s3_config.' + k for k in sorted(_S3_CONFIG_KEYS))})"
                    )
                dest, kind = _S3_CONFIG_KEYS[s3_key]
                out[dest] = _config_value(name, kind, s3_value)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return out


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Flags over the --config file over the defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    from_file: dict[str, Any] = {}
    if known.config is not None:
        try:
            from_file = load_config(known.config)
        except ConfigError as e:
            parser.error(f"--config {e}")
        parser.set_defaults(**{k: v for k, v in from_file.items() if k not in _APPENDED})
    args = parser.parse_args(argv)
    for dest in _APPENDED:
        if not getattr(args, dest) and dest in from_file:
            setattr(args, dest, from_file[dest])
    if args.port is None:
        parser.error("--port is required (or port = ... in the --config file)")
    return args


def _summary(stats: Stats, previous: Optional[Stats], seconds: float) -> str:
    line = (
        f"stored {stats['objects_stored']} ({stats['bytes_stored'] / 1e6:.1f} MB), "
        f"failed {stats['objects_failed']}, associations {stats['associations_open']} open / "
        f"{stats['associations_total']} total / {stats['associations_rejected']} rejected, "
        f"studies {stats['studies_pending']} pending / {stats['studies_completed']} completed"
    )
    if previous is not None and seconds > 0:
        rate = (stats["objects_stored"] - previous["objects_stored"]) / seconds
        line = f"{rate:.1f} files/s; " + line
    return line


def _report_periodically(scp: StoreScp, interval: float, done: threading.Event) -> None:
    previous = scp.stats()
    while not done.wait(interval):
        current = scp.stats()
        print(
            f"dicom-storescp: {_summary(current, previous, interval)}", file=sys.stderr, flush=True
        )
        previous = current


def _say(line: str, stream: Optional[TextIO] = None) -> None:
    """Write one whole line and flush it: a single write, even unbuffered."""
    out = stream if stream is not None else sys.stdout
    out.write(line + "\n")
    out.flush()


def _emit(args: argparse.Namespace, name: str, event: Any) -> None:
    if args.json:
        _say(json.dumps({"event": name, **event}))
    elif name == "OnFileStored":
        where = event["uri"] if event["uri"].startswith("s3://") else event["file"]
        _say(
            f"stored {where} ({event['size']} bytes) from "
            f"{event['calling_ae_title']} {event['peer']}"
        )
    elif name == "OnStudyCompleted":
        series = event["series"]
        count = sum(len(s["instances"]) for s in series)
        _say(
            f"study {event['study_instance_uid']} completed: {len(series)} series, "
            f"{count} instance(s)"
        )
    elif name == "OnError":
        _say(f"error: {event['message']}", sys.stderr)
    elif name == "OnAssociationRejected":
        _say(
            f"rejected association from {event['calling_ae_title']} at {event['peer']}: "
            f"{event['reason']}",
            sys.stderr,
        )
    elif name == "OnServerStarted":
        _say(f"listening on {event['host']}:{event['port']} as {event['ae_title']}", sys.stderr)


def _printer(args: argparse.Namespace, name: str) -> Callable[[Any], None]:
    def listener(event: Any) -> None:
        _emit(args, name, event)

    return listener


def _s3_config(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """s3_config from the --s3-* flags (only what was given; the rest falls
    back to the environment and the defaults)."""
    if args.s3_bucket is None:
        return None
    config: dict[str, Any] = {"bucket": args.s3_bucket, "prefix": args.s3_prefix}
    for key in (
        "region",
        "endpoint",
        "access_key",
        "path_style",
        "part_size",
        "multipart_threshold",
        "part_concurrency",
        "request_timeout",
        "max_retries",
    ):
        value = getattr(args, f"s3_{key}")
        if value is not None:
            config[key] = value
    if args.s3_secret_key_file is not None:
        config["secret_key"] = _read_secret(args.s3_secret_key_file, "--s3-secret-key-file")
    if args.s3_session_token_file is not None:
        config["session_token"] = _read_secret(
            args.s3_session_token_file, "--s3-session-token-file"
        )
    if args.s3_no_check:
        config["check_on_start"] = False
    return config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    backend: StorageBackend = args.storage_backend or (
        "S3" if args.s3_bucket is not None else "Filesystem"
    )
    if backend == "S3" and args.s3_bucket is None:
        parser.error("--storage-backend S3 needs --s3-bucket")
    if backend == "Filesystem" and args.s3_bucket is not None:
        parser.error("--s3-bucket needs --storage-backend S3 (or no --storage-backend)")
    out_dir = args.out_dir
    if out_dir is None and backend == "Filesystem":
        out_dir = "./dicom-storage"
    try:
        s3_config = _s3_config(args)
        scp = StoreScp(
            port=args.port,
            host=args.host,
            ae_title=args.ae_title,
            max_pdu_length=args.max_pdu_length,
            strict=args.strict,
            max_associations=args.max_associations,
            acse_timeout=args.acse_timeout,
            dimse_timeout=args.dimse_timeout,
            idle_timeout=args.idle_timeout,
            allowed_calling_ae_titles=args.allowed_calling_ae_titles,
            require_called_ae_title=args.require_called_ae_title,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_ca=args.tls_ca,
            abstract_syntax_mode=args.abstract_syntax_mode,
            abstract_syntaxes=args.abstract_syntaxes,
            transfer_syntax_mode=args.transfer_syntax_mode,
            transfer_syntaxes=args.transfer_syntaxes,
            out_dir=out_dir,
            storage_backend=backend,
            s3_config=cast(Optional[S3Config], s3_config),
            store_with_file_meta=args.store_with_file_meta,
            extract_tags=args.extract_tags,
            extract_custom_tags=args.extract_custom_tag,
            grouping_strategy=args.grouping,
            custom_groups=dict(args.custom_group) if args.custom_group else None,
            study_timeout=args.study_timeout,
            verbose=args.verbose,
        )
    except (ValueError, NotImplementedError) as e:
        print(f"dicom-storescp: {e}", file=sys.stderr)
        return 1
    for name in EVENT_NAMES:
        scp.add_event_listener(name, _printer(args, name))

    def on_term(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        scp.start()
    except (OSError, ValueError) as e:
        print(f"dicom-storescp: {e}", file=sys.stderr)
        return 1
    done = threading.Event()
    if args.stats_interval > 0:
        threading.Thread(
            target=_report_periodically,
            args=(scp, args.stats_interval, done),
            name="dicom-storescp-summary",
            daemon=True,
        ).start()
    try:
        scp.listen()
    finally:
        done.set()
        print(
            f"dicom-storescp: final: {_summary(scp.stats(), None, 0)}", file=sys.stderr, flush=True
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
