"""The :class:`StoreScp` facade over the Rust core."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Literal, NoReturn, Optional, TypeVar, Union, cast, overload

from . import _core
from ._aio import EventStream, _Subscription
from ._catalog import TRANSFER_SYNTAX_ALIASES
from ._types import (
    AbstractSyntaxMode,
    AssociationRejectedEvent,
    CustomTag,
    ErrorEvent,
    Event,
    EventName,
    FileStoredEvent,
    GroupingStrategy,
    S3Config,
    ServerStartedEvent,
    Stats,
    StorageBackend,
    StudyCompletedEvent,
    TransferSyntaxMode,
)

logger = logging.getLogger("dicom_storescp")
#: Concerns of the core's log records: logger ``dicom_storescp.{concern}``.
LOG_CONCERNS = ("server", "association", "storage", "tags", "study", "s3", "events")
_LOGGERS = {c: logging.getLogger(f"dicom_storescp.{c}") for c in LOG_CONCERNS}
_events_logger = _LOGGERS["events"]

EVENT_NAMES: tuple[EventName, ...] = (
    "OnServerStarted",
    "OnFileStored",
    "OnStudyCompleted",
    "OnError",
    "OnAssociationRejected",
)

Listener = Callable[[Any], object]
L = TypeVar("L", bound=Listener)
_LStarted = TypeVar("_LStarted", bound=Callable[[ServerStartedEvent], object])
_LStored = TypeVar("_LStored", bound=Callable[[FileStoredEvent], object])
_LStudy = TypeVar("_LStudy", bound=Callable[[StudyCompletedEvent], object])
_LError = TypeVar("_LError", bound=Callable[[ErrorEvent], object])
_LRejected = TypeVar("_LRejected", bound=Callable[[AssociationRejectedEvent], object])

_DEFAULT_STUDY_TIMEOUT = 30.0
# Seconds the dispatcher waits after a burst of events before collecting more.
_BATCH_PAUSE = 0.002


def _is_uid(value: str) -> bool:
    parts = value.split(".")
    return 0 < len(value) <= 64 and all(p.isdigit() and p.isascii() for p in parts)


def _is_ae_title(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= 16
        and value.strip() != ""
        and all(0x20 <= ord(c) < 0x7F and c != "\\" for c in value)
    )


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, not {value!r}")
    return value


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")
    return value


def _check_seconds(name: str, value: object, allow_none: bool = True) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
    return cast(str, value)


def _str_list(name: str, value: object) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of strings, not {value!r}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{name} must contain only strings, not {item!r}")
    return items


def _resolve_uids(
    name: str,
    values: list[str],
    kind: Literal["sop_class", "transfer_syntax"],
    known: Optional[set[str]] = None,
) -> list[str]:
    """Turn standard keywords (``"CTImageStorage"``) or UIDs into UIDs."""
    out = []
    for v in values:
        v = v.strip()
        if _is_uid(v):
            uid: Optional[str] = v
        elif kind == "transfer_syntax" and v in TRANSFER_SYNTAX_ALIASES:
            uid = TRANSFER_SYNTAX_ALIASES[v]
        else:
            uid = _core.uid_for_keyword(v, kind)
        if uid is None:
            what = "SOP class" if kind == "sop_class" else "transfer syntax"
            raise ValueError(f"{name}: {v!r} is neither a UID nor a known {what} keyword")
        if known is not None and uid not in known:
            raise ValueError(f"{name}: {v!r} is not a transfer syntax this receiver can store")
        out.append(uid)
    return out


_MIB = 1024 * 1024
_S3_KEYS = (
    "bucket",
    "prefix",
    "region",
    "endpoint",
    "access_key",
    "secret_key",
    "session_token",
    "path_style",
    "check_on_start",
    "part_size",
    "multipart_threshold",
    "part_concurrency",
    "request_timeout",
    "max_retries",
)
_S3_SECRETS = ("secret_key", "session_token")


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None


def _check_s3_text(key: str, value: object) -> str:
    if not isinstance(value, str) or not value or any(ord(c) < 0x20 for c in value):
        if key in _S3_SECRETS:
            # never echo a credential
            raise ValueError(f"s3_config {key} must be a non-empty string")
        raise ValueError(f"s3_config {key} must be a non-empty string, not {value!r}")
    return value


def _check_endpoint(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    host = rest[:-1] if rest.endswith("/") else rest
    if not sep or scheme not in ("http", "https"):
        raise ValueError("s3_config endpoint must start with http:// or https://")
    if "@" in host:
        raise ValueError("s3_config endpoint must not contain credentials")
    if not host or any(c.isspace() or c in "/?#" for c in host):
        raise ValueError(
            f"s3_config endpoint must be http(s)://host[:port] without a path, not {value!r}"
        )
    return value


def _is_bucket_name(value: str) -> bool:
    return 0 < len(value) <= 255 and all(c.isascii() and (c.isalnum() or c in ".-_") for c in value)


def _s3_options(config: object) -> dict[str, Any]:
    """Validate ``s3_config`` and resolve its environment fallbacks."""
    if config is None:
        raise ValueError("s3_config with a bucket is required when storage_backend is 'S3'")
    if not isinstance(config, Mapping):
        raise ValueError("s3_config must be a dict (see S3Config)")
    unknown = sorted(str(k) for k in config if k not in _S3_KEYS)
    if unknown:
        raise ValueError(
            f"s3_config: unknown key(s) {', '.join(unknown)}; known: {', '.join(_S3_KEYS)}"
        )
    cfg = dict(config)

    bucket = cfg.get("bucket")
    if bucket is None:
        raise ValueError("s3_config bucket is required when storage_backend is 'S3'")
    if not isinstance(bucket, str) or not _is_bucket_name(bucket):
        raise ValueError(
            f"s3_config bucket must be a bucket name (letters, digits, '.', '-', '_'), "
            f"not {bucket!r}"
        )
    prefix = cfg.get("prefix", "")
    if (
        not isinstance(prefix, str)
        or prefix.startswith("/")
        or len(prefix) > 512
        or not all(c.isascii() and (c.isalnum() or c in "/.-_") for c in prefix)
    ):
        raise ValueError(
            "s3_config prefix may only contain letters, digits, '/', '.', '-' and '_', must not "
            f"start with '/' and is at most 512 characters, not {prefix!r}"
        )

    region = cfg.get("region")
    if region is None:
        region = _env("AWS_REGION") or _env("AWS_DEFAULT_REGION") or "us-east-1"
    if (
        not isinstance(region, str)
        or not region
        or not all(c.isascii() and (c.isalnum() or c in "-_") for c in region)
    ):
        raise ValueError(f"s3_config region must be a region name, not {region!r}")

    endpoint = cfg.get("endpoint")
    if endpoint is None:
        endpoint = _env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")
    if endpoint is not None:
        endpoint = _check_endpoint(_check_s3_text("endpoint", endpoint))

    # Each key falls back to its variable; the session token only when the
    # access key came from the environment too (never mixed into explicit keys).
    access_key = cfg.get("access_key")
    secret_key = cfg.get("secret_key")
    session_token = cfg.get("session_token")
    if access_key is None:
        access_key = _env("AWS_ACCESS_KEY_ID")
        if session_token is None:
            session_token = _env("AWS_SESSION_TOKEN")
    if secret_key is None:
        secret_key = _env("AWS_SECRET_ACCESS_KEY")
    if access_key is None or secret_key is None:
        raise ValueError(
            "s3_config access_key and secret_key are required (or set AWS_ACCESS_KEY_ID "
            "and AWS_SECRET_ACCESS_KEY in the environment)"
        )
    access_key = _check_s3_text("access_key", access_key)
    secret_key = _check_s3_text("secret_key", secret_key)
    if session_token is not None:
        session_token = _check_s3_text("session_token", session_token)

    path_style = cfg.get("path_style")
    if path_style is None:
        # S3-compatible servers (MinIO, Ceph, moto) are usually addressed by
        # path; AWS by virtual host.
        path_style = endpoint is not None

    def sized(key: str, default: int) -> int:
        return _check_int(f"s3_config {key}", cfg.get(key, default), 5 * _MIB, 512 * _MIB)

    return {
        "bucket": bucket,
        "prefix": prefix,
        "region": region,
        "endpoint": endpoint,
        "access_key": access_key,
        "secret_key": secret_key,
        "session_token": session_token,
        "path_style": _check_bool("s3_config path_style", path_style),
        "check_on_start": _check_bool("s3_config check_on_start", cfg.get("check_on_start", True)),
        "part_size": sized("part_size", 8 * _MIB),
        "multipart_threshold": sized("multipart_threshold", 8 * _MIB),
        "part_concurrency": _check_int(
            "s3_config part_concurrency", cfg.get("part_concurrency", 4), 1, 64
        ),
        "request_timeout": _check_seconds(
            "s3_config request_timeout", cfg.get("request_timeout", 60.0), allow_none=False
        ),
        "max_retries": _check_int("s3_config max_retries", cfg.get("max_retries", 3), 0, 20),
    }


def _redacted(options: dict[str, Any]) -> dict[str, Any]:
    """The options without credentials (what the facade keeps around)."""
    out = dict(options)
    if out.get("s3") is not None:
        out["s3"] = {
            k: ("***" if k in _S3_SECRETS and v is not None else v) for k, v in out["s3"].items()
        }
    return out


_HEX_TAG = re.compile(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")
_PIXEL_DATA_START = 0x7FE00008
_CUSTOM_TAG_KEYS = {"tag", "name", "private_creator"}

#: One attribute to extract, as the core takes it: (tag, name, private creator, custom).
_Request = tuple[int, str, Optional[str], bool]


def _parse_hex_tag(value: str) -> Optional[int]:
    """``"00100010"``, ``"0010,0010"`` or ``"(0010,0010)"`` as an int, else None."""
    text = value.strip()
    m = _HEX_TAG.fullmatch(text)
    if m is None or text.startswith("(") != text.endswith(")"):
        return None
    return int(m.group(1) + m.group(2), 16)


def _check_extractable(option: str, text: str, tag: int, vr: Optional[str]) -> None:
    if vr == "SQ":
        raise ValueError(
            f"{option}: {text!r} is a sequence; only attributes with a value can be extracted"
        )
    group = tag >> 16
    if tag >= _PIXEL_DATA_START or group <= 0x0002 or group == 0xFFFE:
        raise ValueError(
            f"{option}: {text!r} cannot be extracted (only data set attributes before "
            "Pixel Data; group 0002 is the file meta information, which the network does "
            "not carry: see the event's own UID fields)"
        )


def _resolve_tag(option: str, value: str) -> tuple[int, str]:
    """A keyword or hex tag from ``extract_tags`` -> (tag, name in events)."""
    tag = _parse_hex_tag(value)
    if tag is not None:
        known = _core.keyword_for_tag(tag)
        name, vr = (known[0], known[1]) if known else (f"{tag:08X}", None)
    else:
        found = _core.tag_for_keyword(value.strip())
        if found is None:
            raise ValueError(
                f"{option}: {value!r} is neither a DICOM keyword (e.g. 'PatientName') "
                "nor a tag of 8 hex digits (e.g. '00100010')"
            )
        tag, vr = found
        name = value.strip()
    _check_extractable(option, value, tag, vr)
    return tag, name


def _resolve_extraction(
    extract_tags: object,
    extract_custom_tags: object,
    grouping_strategy: str,
    custom_groups: object,
) -> tuple[list[_Request], list[tuple[str, list[str]]]]:
    """Validate the tag options; returns what the core takes."""
    requests: list[_Request] = []
    names: dict[str, int] = {}  # name -> index in requests

    def add(request: _Request, option: str) -> None:
        tag, name = request[0], request[1]
        if name in names:
            if requests[names[name]][0] == tag and not request[3]:
                return  # the same keyword twice
            raise ValueError(f"{option}: name {name!r} is used twice")
        names[name] = len(requests)
        requests.append(request)

    for item in _str_list("extract_tags", extract_tags):
        tag, name = _resolve_tag("extract_tags", item)
        add((tag, name, None, False), "extract_tags")

    if isinstance(extract_custom_tags, (str, Mapping)) or not isinstance(
        extract_custom_tags, Iterable
    ):
        raise ValueError(
            "extract_custom_tags must be a list of {'tag': ..., 'name': ...} dicts, "
            f"not {extract_custom_tags!r}"
        )
    for item in extract_custom_tags:
        if not isinstance(item, Mapping) or not {"tag", "name"} <= set(item):
            raise ValueError(
                f"extract_custom_tags: {item!r} must be a dict with 'tag' and 'name' "
                "(and optionally 'private_creator')"
            )
        extra = set(item) - _CUSTOM_TAG_KEYS
        if extra:
            raise ValueError(f"extract_custom_tags: unknown key(s) {sorted(extra)} in {item!r}")
        raw_tag, name = item["tag"], item["name"]
        creator = item.get("private_creator")
        parsed = _parse_hex_tag(raw_tag) if isinstance(raw_tag, str) else None
        if parsed is None:
            raise ValueError(
                f"extract_custom_tags: tag {raw_tag!r} must be 8 hex digits, e.g. '00091001'"
            )
        tag = parsed
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"extract_custom_tags: name {name!r} must be a non-empty string")
        if creator is not None:
            if not isinstance(creator, str) or not creator.strip() or len(creator) > 64:
                raise ValueError(
                    f"extract_custom_tags: private_creator {creator!r} must be 1 to 64 characters"
                )
            if tag >> 16 & 1 == 0 or tag & 0xFFFF < 0x1000:
                raise ValueError(
                    f"extract_custom_tags: {raw_tag!r} with a private_creator must be a private "
                    "data element (odd group, element xx10-xxFF)"
                )
        known = _core.keyword_for_tag(tag)
        _check_extractable("extract_custom_tags", raw_tag, tag, known[1] if known else None)
        add((tag, name, creator, True), "extract_custom_tags")

    groups: list[tuple[str, list[str]]] = []
    if grouping_strategy == "Custom":
        if not isinstance(custom_groups, Mapping) or not custom_groups:
            raise ValueError(
                "custom_groups must be a non-empty dict {group: [tag, ...]} when "
                "grouping_strategy is 'Custom'"
            )
        seen: dict[str, str] = {}
        for group, members in custom_groups.items():
            if not isinstance(group, str) or not group or group == "other":
                raise ValueError(
                    f"custom_groups: group name {group!r} must be a non-empty string other "
                    "than 'other' (the group of everything else)"
                )
            resolved: list[str] = []
            for member in _str_list(f"custom_groups[{group!r}]", members):
                if member in names:
                    name = member
                else:
                    tag, name = _resolve_tag(f"custom_groups[{group!r}]", member)
                    if name not in names:
                        add((tag, name, None, False), "custom_groups")
                if name in seen:
                    raise ValueError(
                        f"custom_groups: {member!r} is in both {seen[name]!r} and {group!r}"
                    )
                seen[name] = group
                resolved.append(name)
            groups.append((group, resolved))
    elif custom_groups:
        raise ValueError("custom_groups is only used with grouping_strategy='Custom'")
    return requests, groups


class StoreScp:
    """A DICOM C-STORE SCP: receives objects over the network and stores them.

    Events are delivered to listeners on one dispatcher thread, never on the
    network threads; a slow or failing listener never stalls reception.
    """

    def __init__(
        self,
        port: int,
        *,
        ae_title: str = "STORE-SCP",
        strict: bool = False,
        max_pdu_length: int = 16384,
        out_dir: Union[str, os.PathLike[str], None] = None,
        storage_backend: StorageBackend = "Filesystem",
        s3_config: Optional[S3Config] = None,
        store_with_file_meta: bool = False,
        extract_tags: Sequence[str] = (),
        extract_custom_tags: Sequence[CustomTag] = (),
        grouping_strategy: GroupingStrategy = "ByScope",
        custom_groups: Optional[Mapping[str, Sequence[str]]] = None,
        abstract_syntax_mode: AbstractSyntaxMode = "AllStorage",
        abstract_syntaxes: Sequence[str] = (),
        transfer_syntax_mode: TransferSyntaxMode = "All",
        transfer_syntaxes: Sequence[str] = (),
        study_timeout: float = _DEFAULT_STUDY_TIMEOUT,
        verbose: bool = False,
        host: str = "0.0.0.0",
        max_associations: int = 100,
        acse_timeout: Optional[float] = 30.0,
        dimse_timeout: Optional[float] = 60.0,
        idle_timeout: Optional[float] = 300.0,
        allowed_calling_ae_titles: Optional[Sequence[str]] = None,
        require_called_ae_title: bool = False,
        tls_cert: Union[str, os.PathLike[str], None] = None,
        tls_key: Union[str, os.PathLike[str], None] = None,
        tls_ca: Union[str, os.PathLike[str], None] = None,
        max_queued_events: int = 1000,
        **unknown: NoReturn,
    ) -> None:
        if unknown:
            raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
        port = _check_int("port", port, 0, 65535)
        if not _is_ae_title(ae_title):
            raise ValueError(
                f"ae_title must be 1 to 16 printable ASCII characters, not {ae_title!r}"
            )
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, not {host!r}")
        backend = _check_choice("storage_backend", storage_backend, ("Filesystem", "S3"))
        s3: Optional[dict[str, Any]] = None
        if backend == "S3":
            s3 = _s3_options(s3_config)
        elif s3_config is not None:
            raise ValueError("s3_config is only used when storage_backend is 'S3'")
        out_path: Optional[str] = None
        if out_dir is None:
            if backend == "Filesystem":
                raise ValueError("out_dir is required when storage_backend is 'Filesystem'")
        elif not isinstance(out_dir, (str, os.PathLike)):
            raise ValueError(f"out_dir must be a path, not {out_dir!r}")
        else:
            out_path = os.path.abspath(os.fspath(out_dir))

        grouping = _check_choice(
            "grouping_strategy", grouping_strategy, ("ByScope", "Flat", "StudyLevel", "Custom")
        )
        requests, groups = _resolve_extraction(
            extract_tags, extract_custom_tags, grouping, custom_groups
        )
        timeout = _check_seconds("study_timeout", study_timeout, allow_none=False)
        tls = {"tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
        for name, value in tls.items():
            if value is not None and not os.path.isfile(os.fspath(value)):
                raise ValueError(f"{name}: {value!r} is not a readable file")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if tls_ca is not None and tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key (TLS must be on)")

        as_mode = _check_choice(
            "abstract_syntax_mode", abstract_syntax_mode, ("AllStorage", "All", "Custom")
        )
        as_uids = _resolve_uids(
            "abstract_syntaxes", _str_list("abstract_syntaxes", abstract_syntaxes), "sop_class"
        )
        if as_mode == "Custom" and not as_uids:
            raise ValueError(
                "abstract_syntaxes must not be empty when abstract_syntax_mode is 'Custom'"
            )
        ts_mode = _check_choice(
            "transfer_syntax_mode", transfer_syntax_mode, ("All", "UncompressedOnly", "Custom")
        )
        ts_uids = _resolve_uids(
            "transfer_syntaxes",
            _str_list("transfer_syntaxes", transfer_syntaxes),
            "transfer_syntax",
            set(_core.storable_transfer_syntax_uids()),
        )
        if ts_mode == "Custom" and not ts_uids:
            raise ValueError(
                "transfer_syntaxes must not be empty when transfer_syntax_mode is 'Custom'"
            )

        allowed: Optional[list[str]] = None
        if allowed_calling_ae_titles is not None:
            allowed = _str_list("allowed_calling_ae_titles", allowed_calling_ae_titles)
            for ae in allowed:
                if not _is_ae_title(ae):
                    raise ValueError(f"allowed_calling_ae_titles: {ae!r} is not an AE title")

        options: dict[str, Any] = {
            "host": host,
            "port": port,
            "ae_title": ae_title,
            "max_pdu_length": _check_int("max_pdu_length", max_pdu_length, 4096, 16 * 1024 * 1024),
            "strict": _check_bool("strict", strict),
            "out_dir": out_path,
            "storage_backend": backend,
            "s3": s3,
            "store_with_file_meta": _check_bool("store_with_file_meta", store_with_file_meta),
            "abstract_syntax_mode": as_mode,
            "abstract_syntaxes": as_uids,
            "transfer_syntax_mode": ts_mode,
            "transfer_syntaxes": ts_uids,
            "max_associations": _check_int("max_associations", max_associations, 1, 100_000),
            "acse_timeout": _check_seconds("acse_timeout", acse_timeout),
            "dimse_timeout": _check_seconds("dimse_timeout", dimse_timeout),
            "idle_timeout": _check_seconds("idle_timeout", idle_timeout),
            "allowed_calling_ae_titles": allowed,
            "require_called_ae_title": _check_bool(
                "require_called_ae_title", require_called_ae_title
            ),
            **{k: None if v is None else os.path.abspath(os.fspath(v)) for k, v in tls.items()},
            "verbose": _check_bool("verbose", verbose),
            "extract": requests,
            "grouping_strategy": grouping,
            "custom_groups": groups,
            "study_timeout": timeout,
        }
        self._max_queued_events = _check_int("max_queued_events", max_queued_events, 1, 1_000_000)
        self._core = _core._Server(options)
        self._options = _redacted(options)
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENT_NAMES}
        self._subscriptions: list[_Subscription] = []
        self._lock = threading.Lock()
        self._dispatcher: Optional[threading.Thread] = None
        self._running = threading.Event()
        self._drained = threading.Event()
        self._port: Optional[int] = None
        self.verbose = verbose
        if verbose:
            _enable_verbose_logging()

    # -- listeners ---------------------------------------------------------

    @overload
    def add_event_listener(
        self, event: Literal["OnServerStarted"], listener: Callable[[ServerStartedEvent], object]
    ) -> None: ...
    @overload
    def add_event_listener(
        self, event: Literal["OnFileStored"], listener: Callable[[FileStoredEvent], object]
    ) -> None: ...
    @overload
    def add_event_listener(
        self, event: Literal["OnStudyCompleted"], listener: Callable[[StudyCompletedEvent], object]
    ) -> None: ...
    @overload
    def add_event_listener(
        self, event: Literal["OnError"], listener: Callable[[ErrorEvent], object]
    ) -> None: ...
    @overload
    def add_event_listener(
        self,
        event: Literal["OnAssociationRejected"],
        listener: Callable[[AssociationRejectedEvent], object],
    ) -> None: ...
    def add_event_listener(self, event: EventName, listener: Listener) -> None:
        """Call ``listener(event_dict)`` for every ``event``."""
        self._check_event(event)
        if not callable(listener):
            raise ValueError(f"listener must be callable, not {listener!r}")
        with self._lock:
            self._listeners[event].append(listener)

    def remove_event_listener(self, event: EventName, listener: Listener) -> None:
        """Stop calling ``listener`` for ``event`` (no error if it was not registered)."""
        self._check_event(event)
        with self._lock:
            if listener in self._listeners[event]:
                self._listeners[event].remove(listener)

    @overload
    def on(self, event: Literal["OnServerStarted"]) -> Callable[[_LStarted], _LStarted]: ...
    @overload
    def on(self, event: Literal["OnFileStored"]) -> Callable[[_LStored], _LStored]: ...
    @overload
    def on(self, event: Literal["OnStudyCompleted"]) -> Callable[[_LStudy], _LStudy]: ...
    @overload
    def on(self, event: Literal["OnError"]) -> Callable[[_LError], _LError]: ...
    @overload
    def on(self, event: Literal["OnAssociationRejected"]) -> Callable[[_LRejected], _LRejected]: ...
    def on(self, event: EventName) -> Callable[[L], L]:
        """Decorator form of :meth:`add_event_listener`."""

        def register(listener: L) -> L:
            self.add_event_listener(event, listener)
            return listener

        return register

    @staticmethod
    def _check_event(event: str) -> None:
        if event not in EVENT_NAMES:
            raise ValueError(f"event must be one of {', '.join(EVENT_NAMES)}, not {event!r}")

    # -- asyncio -----------------------------------------------------------

    @overload
    def events(self, *, maxsize: Optional[int] = None) -> EventStream[Event]: ...
    @overload
    def events(
        self, name: Literal["OnServerStarted"], /, *, maxsize: Optional[int] = None
    ) -> EventStream[ServerStartedEvent]: ...
    @overload
    def events(
        self, name: Literal["OnFileStored"], /, *, maxsize: Optional[int] = None
    ) -> EventStream[FileStoredEvent]: ...
    @overload
    def events(
        self, name: Literal["OnStudyCompleted"], /, *, maxsize: Optional[int] = None
    ) -> EventStream[StudyCompletedEvent]: ...
    @overload
    def events(
        self, name: Literal["OnError"], /, *, maxsize: Optional[int] = None
    ) -> EventStream[ErrorEvent]: ...
    @overload
    def events(
        self, name: Literal["OnAssociationRejected"], /, *, maxsize: Optional[int] = None
    ) -> EventStream[AssociationRejectedEvent]: ...
    @overload
    def events(
        self, name: EventName, /, *names: EventName, maxsize: Optional[int] = None
    ) -> EventStream[Event]: ...
    def events(self, *names: EventName, maxsize: Optional[int] = None) -> EventStream[Any]:
        """An async iterator over this server's events (all, or only ``names``),
        the same dicts listeners get, each with its name under ``"event"``.

        Call it from a coroutine: the stream belongs to the running event loop.
        It receives the events that happen from now on, and ends when the
        server stops; made while the server is not running (before
        :meth:`start`, or after :meth:`stop`), it waits for the next start and
        ends at the stop after it. At most ``maxsize`` (default ``max_queued_events``)
        events wait in it: a consumer that falls behind slows reception down
        (the sender waits), nothing is dropped.
        """
        import asyncio  # lazily: only asyncio users pay for it

        for name in names:
            self._check_event(name)
        loop = asyncio.get_running_loop()
        size = self._max_queued_events if maxsize is None else maxsize
        size = _check_int("maxsize", size, 1, 1_000_000)
        sub = _Subscription(loop, frozenset(names) if names else None, size)
        with self._lock:
            self._subscriptions.append(sub)
        return EventStream(sub, self._unsubscribe)

    def _unsubscribe(self, sub: _Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    async def astart(self) -> StoreScp:
        """:meth:`start` without blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def astop(self, timeout: float = 30.0) -> None:
        """:meth:`stop` without blocking the event loop (so that ``async for``
        consumers on it take the last events, pending studies included)."""
        import asyncio

        await asyncio.to_thread(self.stop, timeout)

    async def serve(self) -> None:
        """Start (if needed) and run until cancelled (or stopped elsewhere);
        then stop gracefully: objects in flight are finished and pending
        studies reported before the cancellation propagates."""
        import asyncio

        await self.astart()
        try:
            while self._running.is_set() and not self._drained.is_set():
                await asyncio.sleep(0.1)
        finally:
            # Stopping takes a moment (objects in flight, pending studies):
            # a second cancellation does not cut it short.
            stopping = asyncio.ensure_future(self.astop())
            cancelled = False
            while not stopping.done():
                try:
                    await asyncio.shield(stopping)
                except asyncio.CancelledError:
                    cancelled = True
            stopping.result()
            if cancelled:
                raise asyncio.CancelledError

    async def __aenter__(self) -> StoreScp:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> Optional[int]:
        """The bound port once started (useful with ``port=0``)."""
        return self._port

    def stats(self) -> Stats:
        """Counters: associations open/total/rejected, objects stored/failed,
        bytes stored, studies pending/completed (zero before ``start()``; the
        last server's after ``stop()``)."""
        return cast(Stats, self._core.stats())

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def start(self) -> StoreScp:
        """Bind the port and start receiving in the background; returns once bound."""
        if self._running.is_set():
            return self
        self._core.set_log_level(_forwarded_level())
        self._port = self._core.start()
        self._running.set()
        self._drained = threading.Event()
        dispatcher = threading.Thread(
            target=_dispatch,
            args=(self._core, self._listeners, self._subscriptions, self._lock, self._drained),
            name=f"dicom-storescp-events-{self._port}",
            daemon=True,
        )
        self._dispatcher = dispatcher
        dispatcher.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop gracefully: objects in flight are finished (up to ``timeout``
        seconds), then every association is closed. Every event is delivered
        to listeners before this returns (unless called from a listener)."""
        if not self._running.is_set():
            return
        self._release_streams_of_this_thread()
        with self._lock:
            # a stream nobody reads must not hold the stop up for ever
            deadline = time.monotonic() + timeout
            for sub in self._subscriptions:
                sub.deadline = deadline
        self._core.stop(timeout)
        dispatcher = self._dispatcher
        # The core always ends its stream with "Closed"; the bound only guards
        # against a listener that never returns. (An Event, not Thread.join: a
        # join interrupted by Ctrl-C can leave the thread looking finished
        # while it still runs.)
        if (
            dispatcher is not None
            and dispatcher is not threading.current_thread()
            and not self._drained.wait(timeout + 30.0)
        ):
            logger.warning("a listener is still running; stop() returns without it")
        self._running.clear()

    def _release_streams_of_this_thread(self) -> None:
        """A blocking stop() on the thread of an event loop that consumes
        events() would wait forever for that consumer: close its streams."""
        asyncio = sys.modules.get("asyncio")  # not imported: no loop runs
        if asyncio is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        with self._lock:
            mine = [s for s in self._subscriptions if s.loop is loop]
        if mine:
            logger.warning(
                "stop() called on the event loop that consumes scp.events(): its streams "
                "are closed; use 'await scp.astop()' or 'async with' to get every event"
            )
            for sub in mine:
                sub.close()
                self._unsubscribe(sub)

    def listen(self) -> None:
        """Start (if needed) and block until :meth:`stop` or Ctrl-C."""
        self.start()
        try:
            while self._running.is_set():
                self._running_wait(0.5)
        except KeyboardInterrupt:
            logger.info("interrupted, stopping")
        finally:
            self.stop()

    def _running_wait(self, seconds: float) -> None:
        if self._drained.wait(seconds):
            self._running.clear()

    def __enter__(self) -> StoreScp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self.running else "stopped"
        where = (
            f"s3://{self._options['s3']['bucket']}/{self._options['s3']['prefix']}"
            if self._options["s3"] is not None
            else self._options["out_dir"]
        )
        return f"StoreScp(ae_title={self._options['ae_title']!r}, storage={where!r}, {state})"


def _forwarded_level() -> int:
    """The least severe level any ``dicom_storescp`` logger would handle: the
    core builds and forwards no record below it."""
    return min(logger.getEffectiveLevel(), *(lg.getEffectiveLevel() for lg in _LOGGERS.values()))


def _enable_verbose_logging() -> None:
    """verbose=True: INFO lines from this package, to stderr unless the
    application configured logging itself."""
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def _dispatch(
    core: Any,
    listeners: dict[str, list[Listener]],
    subscriptions: list[_Subscription],
    lock: threading.Lock,
    drained: threading.Event,
) -> None:
    """The dispatcher thread: drain the core's events until it closes."""
    try:
        _dispatch_until_closed(core, listeners, subscriptions, lock)
    finally:
        with lock:
            ending = list(subscriptions)
            subscriptions.clear()
        for sub in ending:
            sub.end()
        drained.set()


def _dispatch_until_closed(
    core: Any,
    listeners: dict[str, list[Listener]],
    subscriptions: list[_Subscription],
    lock: threading.Lock,
) -> None:
    while True:
        # The batch lives only in _deliver's frame: once delivered, no event
        # stays referenced while this thread waits for the next ones (an
        # OnStudyCompleted event holds every instance of its study).
        delivered = _deliver(core.next_events(0.5), listeners, subscriptions, lock)
        if delivered < 0:
            return
        if delivered > 0:
            # Let the next events gather for a moment, so that busy reception
            # (even one object at a time over one association) wakes this
            # thread and takes the GIL once per batch rather than once per
            # object. Events are late by at most this pause.
            time.sleep(_BATCH_PAUSE)


def _deliver(
    batch: list[dict[str, Any]],
    listeners: dict[str, list[Listener]],
    subscriptions: list[_Subscription],
    lock: threading.Lock,
) -> int:
    """Hand each event of `batch` to its listeners and streams; returns how
    many events it held, or -1 at "Closed"."""
    for event in batch:
        name = event["event"]
        if name == "Closed":
            return -1
        if name == "_Log":
            _LOGGERS.get(event["target"], logger).log(event["level"], "%s", event["message"])
            continue
        with lock:
            targets = list(listeners.get(name, ()))
            streams = [s for s in subscriptions if s.wants(name)] if subscriptions else ()
        for listener in targets:
            try:
                listener(event)
            except Exception:
                _events_logger.exception("listener %r for %s raised", listener, name)
        for stream in streams:
            # waits while that stream is full: backpressure
            stream.put(event)
            if stream.closed:  # its consumer went away (e.g. its loop closed)
                with lock:
                    if stream in subscriptions:
                        subscriptions.remove(stream)
    return len(batch)
