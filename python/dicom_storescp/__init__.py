"""dicom-storescp: a fast, safe DICOM C-STORE SCP for Python with a Rust core.

>>> from dicom_storescp import StoreScp
>>> scp = StoreScp(port=4446, ae_title="MY-SCP", out_dir="./dicom-storage")
>>> scp.add_event_listener("OnFileStored", lambda event: print(event["file"]))
>>> scp.listen()  # doctest: +SKIP
"""

from ._aio import EventStream
from ._catalog import (
    COMMON_SOP_CLASSES,
    COMMON_TRANSFER_SYNTAXES,
    CommonSopClasses,
    CommonTransferSyntaxes,
    get_common_sop_classes,
    get_common_transfer_syntaxes,
)
from ._core import __version__
from ._scp import EVENT_NAMES, LOG_CONCERNS, StoreScp
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
    StudyInstance,
    StudySeries,
    Tags,
    TransferSyntaxMode,
)

__all__ = [
    "COMMON_SOP_CLASSES",
    "COMMON_TRANSFER_SYNTAXES",
    "EVENT_NAMES",
    "LOG_CONCERNS",
    "AbstractSyntaxMode",
    "AssociationRejectedEvent",
    "CommonSopClasses",
    "CommonTransferSyntaxes",
    "CustomTag",
    "ErrorEvent",
    "Event",
    "EventName",
    "EventStream",
    "FileStoredEvent",
    "GroupingStrategy",
    "S3Config",
    "ServerStartedEvent",
    "Stats",
    "StorageBackend",
    "StoreScp",
    "StudyCompletedEvent",
    "StudyInstance",
    "StudySeries",
    "Tags",
    "TransferSyntaxMode",
    "__version__",
    "get_common_sop_classes",
    "get_common_transfer_syntaxes",
]
