"""Typed shapes of the options and events of :class:`dicom_storescp.StoreScp`."""

from __future__ import annotations

from typing import Literal, Optional, TypedDict, Union

EventName = Literal[
    "OnServerStarted", "OnFileStored", "OnStudyCompleted", "OnError", "OnAssociationRejected"
]
StorageBackend = Literal["Filesystem", "S3"]
GroupingStrategy = Literal["ByScope", "Flat", "StudyLevel", "Custom"]
AbstractSyntaxMode = Literal["AllStorage", "All", "Custom"]
TransferSyntaxMode = Literal["All", "UncompressedOnly", "Custom"]

#: Extracted tags: grouped (``{"patient": {...}, ...}``) or flat, per the
#: grouping strategy. Values are ``str``.
Tags = dict[str, Union[str, dict[str, str]]]


class _CustomTagRequired(TypedDict):
    tag: str
    name: str


class CustomTag(_CustomTagRequired, total=False):
    """``{"tag": "00091001", "name": "CustomField"}``; with ``private_creator``
    the block of a private tag is found through its Private Creator."""

    private_creator: str


class S3Config(TypedDict, total=False):
    """``s3_config`` of ``storage_backend="S3"``. Only ``bucket`` is required.

    Credentials come from ``access_key``/``secret_key`` (+ ``session_token``),
    else from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+
    ``AWS_SESSION_TOKEN``); ``region`` from ``AWS_REGION`` /
    ``AWS_DEFAULT_REGION`` (default ``"us-east-1"``); ``endpoint`` from
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (default: AWS).
    """

    bucket: str
    #: prepended verbatim to ``{study}/{series}/{sop}.dcm`` (include the ``/``)
    prefix: str
    region: str
    #: ``http(s)://host[:port]`` of an S3-compatible server
    endpoint: str
    access_key: str
    secret_key: str
    session_token: str
    #: default: True with an ``endpoint``, False for AWS (virtual-host addressing)
    path_style: bool
    #: list the bucket at ``start()`` and fail if that fails (default True)
    check_on_start: bool
    #: bytes per multipart part (5 MiB to 512 MiB, default 8 MiB)
    part_size: int
    #: objects larger than this go up as multipart uploads (default 8 MiB)
    multipart_threshold: int
    #: parts of one upload in flight at once (1 to 64, default 4)
    part_concurrency: int
    #: seconds per request (default 60)
    request_timeout: float
    #: retries of a request that failed transiently (0 to 20, default 3)
    max_retries: int


class ServerStartedEvent(TypedDict):
    """``OnServerStarted``: the port is bound."""

    event: Literal["OnServerStarted"]
    port: int
    ae_title: str
    host: str


class FileStoredEvent(TypedDict):
    """``OnFileStored``: one object stored (the sender was answered Success)."""

    event: Literal["OnFileStored"]
    #: the file's path (Filesystem) or the object key (S3)
    file: str
    #: ``file:///...`` (Filesystem) or ``s3://bucket/key`` (S3)
    uri: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    tags: Tags
    calling_ae_title: str
    peer: str
    size: int


class StudyInstance(TypedDict):
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file: str
    uri: str
    tags: Tags


class StudySeries(TypedDict):
    series_instance_uid: str
    tags: dict[str, str]
    instances: list[StudyInstance]


class StudyCompletedEvent(TypedDict):
    """``OnStudyCompleted``: ``study_timeout`` seconds passed without a new instance."""

    event: Literal["OnStudyCompleted"]
    study_instance_uid: str
    tags: dict[str, str]
    series: list[StudySeries]


class ErrorEvent(TypedDict):
    """``OnError``: a store that failed or was refused, or an object cut off by an abort."""

    event: Literal["OnError"]
    message: str
    sop_instance_uid: Optional[str]
    calling_ae_title: Optional[str]
    peer: Optional[str]
    status: Optional[int]


class AssociationRejectedEvent(TypedDict):
    """``OnAssociationRejected``: an association refused at negotiation, over the
    association limit, or a failed TLS handshake."""

    event: Literal["OnAssociationRejected"]
    peer: str
    calling_ae_title: Optional[str]
    called_ae_title: Optional[str]
    reason: str
    result: Literal["permanent", "transient"]


class Stats(TypedDict):
    """Counters of one StoreScp (``scp.stats()``)."""

    associations_open: int
    associations_total: int
    associations_rejected: int
    objects_stored: int
    objects_failed: int
    bytes_stored: int
    studies_pending: int
    studies_completed: int


#: Any event; the ``"event"`` key (its name) tells which, and narrows the type:
#: ``if event["event"] == "OnFileStored": event["file"]``.
Event = Union[
    ServerStartedEvent,
    FileStoredEvent,
    StudyCompletedEvent,
    ErrorEvent,
    AssociationRejectedEvent,
]

__all__ = [
    "Stats",
    "AbstractSyntaxMode",
    "AssociationRejectedEvent",
    "CustomTag",
    "ErrorEvent",
    "Event",
    "EventName",
    "FileStoredEvent",
    "GroupingStrategy",
    "S3Config",
    "ServerStartedEvent",
    "StorageBackend",
    "StudyCompletedEvent",
    "StudyInstance",
    "StudySeries",
    "Tags",
    "TransferSyntaxMode",
]
