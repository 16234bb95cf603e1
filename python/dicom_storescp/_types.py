"""Typed shapes of the options and events of :class:`dicom_storescp.StoreScp`."""

from __future__ import annotations

from typing import Literal, Optional, TypedDict, Union

EventName = Literal["OnServerStarted", "OnFileStored", "OnError", "OnAssociationRejected"]
StorageBackend = Literal["Filesystem", "S3"]
GroupingStrategy = Literal["ByScope", "Flat", "StudyLevel", "Custom"]
AbstractSyntaxMode = Literal["AllStorage", "All", "Custom"]
TransferSyntaxMode = Literal["All", "UncompressedOnly", "Custom"]

#: Extracted tags: grouped (``{"patient": {...}, ...}``) or flat, per the
#: grouping strategy.
Tags = dict[str, Union[str, dict[str, str]]]


class CustomTag(TypedDict):
    tag: str
    name: str


class S3Config(TypedDict, total=False):
    bucket: str
    access_key: str
    secret_key: str
    endpoint: str
    region: str
    prefix: str


class ServerStartedEvent(TypedDict):
    port: int
    ae_title: str
    host: str


class FileStoredEvent(TypedDict):
    file: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    tags: Tags
    calling_ae_title: str
    peer: str
    size: int


class ErrorEvent(TypedDict):
    message: str
    sop_instance_uid: Optional[str]
    calling_ae_title: Optional[str]
    peer: Optional[str]
    status: Optional[int]


class AssociationRejectedEvent(TypedDict):
    peer: str
    calling_ae_title: Optional[str]
    called_ae_title: Optional[str]
    reason: str
    result: Literal["permanent", "transient"]


Event = Union[ServerStartedEvent, FileStoredEvent, ErrorEvent, AssociationRejectedEvent]

__all__ = [
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
    "Tags",
    "TransferSyntaxMode",
]
