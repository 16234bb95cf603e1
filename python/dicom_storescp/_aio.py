"""asyncio side of :class:`dicom_storescp.StoreScp`: bounded event streams.

The dispatcher thread (see ``_scp._dispatch``) hands every event to each
open :class:`EventStream`. A stream holds at most ``maxsize`` events; when it
is full the dispatcher waits for the consumer to take one (backpressure: the
core's own bounded queue then fills, and the network tasks wait before they
read the sender's next object). Nothing is dropped while a stream is open.

A stream stops holding the dispatcher up as soon as it is closed: by
``aclose()``, by leaving ``async with``, when the ``async for`` that owns it
is left (break, exception, cancellation: the stream is then unreferenced and
finalized), or when its event loop is closed.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

if TYPE_CHECKING:  # asyncio is imported by whoever uses these (it costs ~8 MB RSS)
    import asyncio

E = TypeVar("E")

logger = logging.getLogger("dicom_storescp.events")

# How often a dispatcher waiting for room re-checks that the consumer's
# event loop is still alive.
_ROOM_POLL = 0.25


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Subscription:
    """The queue between the dispatcher thread and one consumer's loop."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, names: Optional[frozenset[str]], maxsize: int
    ) -> None:
        self.loop = loop
        self.names = names
        self.maxsize = maxsize
        self.items: deque[Any] = deque()
        self.cond = threading.Condition(threading.Lock())
        #: the consumer is gone: take nothing more, wait for nothing
        self.closed = False
        #: the server stopped: nothing more will come
        self.ended = False
        self.waiter: Optional[asyncio.Future[None]] = None
        #: set by stop(): past this monotonic time a full stream is given up
        #: on, so that a consumer that never reads cannot hang stop()
        self.deadline: Optional[float] = None

    def wants(self, name: str) -> bool:
        return self.names is None or name in self.names

    # -- dispatcher thread -------------------------------------------------

    def put(self, event: Any) -> None:
        """Queue ``event``; waits while the stream is full (unless closed)."""
        with self.cond:
            while len(self.items) >= self.maxsize and not self.closed:
                if self.loop.is_closed():
                    self._close_locked()
                    break
                if self.deadline is not None and time.monotonic() > self.deadline:
                    logger.warning(
                        "an events() stream was not read during stop(): closed, its "
                        "remaining events are dropped"
                    )
                    self._close_locked()
                    break
                self.cond.wait(_ROOM_POLL)
            if self.closed:
                return
            self.items.append(event)
            self._wake_locked()

    def end(self) -> None:
        """The server stopped: the consumer gets what is queued, then the end."""
        with self.cond:
            self.ended = True
            self._wake_locked()

    # -- any thread --------------------------------------------------------

    def close(self) -> None:
        with self.cond:
            self._close_locked()
            self._wake_locked()

    def _close_locked(self) -> None:
        self.closed = True
        self.items.clear()
        self.cond.notify_all()

    def _wake_locked(self) -> None:
        waiter = self.waiter
        if waiter is None:
            return
        self.waiter = None
        try:
            self.loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:  # the loop is closed: nobody will consume
            self._close_locked()

    # -- the consumer's loop -----------------------------------------------

    async def get(self) -> Any:
        while True:
            with self.cond:
                if self.items:
                    item = self.items.popleft()
                    self.cond.notify()  # room for a waiting dispatcher
                    return item
                if self.ended or self.closed:
                    raise StopAsyncIteration
                waiter = self.loop.create_future()
                self.waiter = waiter
            try:
                await waiter
            finally:
                with self.cond:
                    if self.waiter is waiter:
                        self.waiter = None


class EventStream(Generic[E]):
    """``async for event in scp.events():`` the events of one StoreScp, as the
    dicts listeners get, in order; it ends when the server stops.

    At most ``maxsize`` events wait in the stream; a consumer that falls
    behind slows reception down rather than losing events. Close it when
    done (``aclose()``, or ``async with scp.events() as stream:``); leaving
    an ``async for`` over an unnamed ``scp.events()`` closes it too.
    """

    def __init__(self, subscription: _Subscription, unregister: Any) -> None:
        self._sub = subscription
        self._finalizer = weakref.finalize(self, _close_and_unregister, subscription, unregister)

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        item: E = await self._sub.get()
        return item

    async def aclose(self) -> None:
        """Stop receiving; events not yet taken are discarded."""
        self._finalizer()

    def close(self) -> None:
        """Like :meth:`aclose`, from synchronous code or another thread."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Closed by the consumer (or because stop() ran on its loop's thread)."""
        return self._sub.closed or not self._finalizer.alive

    def qsize(self) -> int:
        """Events waiting in the stream."""
        with self._sub.cond:
            return len(self._sub.items)

    @property
    def maxsize(self) -> int:
        return self._sub.maxsize

    async def __aenter__(self) -> EventStream[E]:
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._finalizer()


def _close_and_unregister(subscription: _Subscription, unregister: Any) -> None:
    subscription.close()
    unregister(subscription)
