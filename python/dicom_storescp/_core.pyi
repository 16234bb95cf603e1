"""Type stubs for the Rust extension module (see src/python.rs)."""

from typing import Any, Literal, Optional

__version__: str
IMPLEMENTATION_CLASS_UID: str
IMPLEMENTATION_VERSION_NAME: str

#: One event as ``next_events`` returns it: an event dict of the facade
#: (``"event"`` holds its name), a log record (``"event": "_Log"`` with
#: ``level``, ``target``, ``message``) or ``{"event": "Closed"}``.
_RawEvent = dict[str, Any]

class _Server:
    """One receiver: its runtime, event channel and storage (used by StoreScp)."""

    def __init__(self, options: dict[str, Any]) -> None: ...
    def start(self) -> int:
        """Bind and serve; returns the bound port. OSError/ValueError on failure."""
    def stop(self, grace: float) -> None:
        """Graceful stop; the event stream then ends with ``{"event": "Closed"}``."""
    def set_log_level(self, level: int) -> None:
        """Least severe ``logging`` level forwarded as ``_Log`` events."""
    @property
    def port(self) -> Optional[int]: ...
    def stats(self) -> dict[str, int]: ...
    def next_events(self, timeout: float, max: int = 1024) -> list[_RawEvent]:
        """Wait up to ``timeout`` s (GIL released), then every queued event (at most ``max``)."""

def storage_sop_class_uids() -> list[str]: ...
def storable_transfer_syntax_uids() -> list[str]: ...
def uid_for_keyword(
    keyword: str, kind: Literal["any", "sop_class", "transfer_syntax"] = "any"
) -> Optional[str]: ...
def keyword_for_uid(uid: str) -> Optional[str]: ...
def tag_for_keyword(keyword: str) -> Optional[tuple[int, str]]: ...
def keyword_for_tag(tag: int) -> Optional[tuple[str, str]]: ...
def attribute_level(tag: int) -> Literal["patient", "study", "series", "instance"]: ...
def attribute_levels() -> list[tuple[int, str, Literal["patient", "study", "series"]]]: ...
