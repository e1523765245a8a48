"""Connection-level defences that uvicorn does not have: slow clients, too many sockets, accept errors.

uvicorn's ``timeout_keep_alive`` only starts after a response, so a client that connects and sends
nothing, or sends its headers one byte a second ("slowloris"), or its body that slowly, holds its
socket for as long as it likes; and ``limit_concurrency`` answers 503 to *new requests* once that many
connections are open, so a few hundred such sockets would turn every honest request away, while the
sockets themselves stay open until the process runs out of file descriptors. Then ``accept()`` fails
with EMFILE and asyncio logs a full traceback for every retry.

:class:`GuardedH11Protocol` is uvicorn's h11 protocol with two additions:

* **A read deadline**: a client has ``read_timeout_s`` to send one whole request (headers and body),
  counted from the moment it connects or sends the first byte of its next request. A slower one is
  disconnected (with a 408 if it had started a request). Coding time is not counted: the deadline
  stops once the request is read, and the coding gate has its own timeout.
* **A connection cap**: at most ``max_connections`` sockets are open. When a new one would exceed
  it, the connection that has waited longest on an unfinished request is closed to make room (a
  slow client, since honest clients send a request within milliseconds); if every connection is
  busy coding or idle between requests, the new one is refused instead. The cap is kept below the
  process's open-file limit with room for one backlog of new connections (:func:`connection_limits`),
  so ``accept()`` does not run out of descriptors.

:func:`quiet_accept_errors` makes the event loop log accept errors once and then at most once a
minute with a count, instead of a traceback per retry. :class:`LogBudget` is that rate limit.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import resource
import time
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("icdcoder.serving")

#: Connections allowed, and the listen backlog (uvicorn's default), when none is configured.
DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_BACKLOG = 2048
#: Descriptors kept free for everything but client sockets: the listening socket, the event loop, log
#: files, the files coders and static pages open, the thread pool.
FD_RESERVE = 64
#: A request's bytes are still arriving in these h11 states (IDLE: before its headers are complete).
_READING = (h11.IDLE, h11.SEND_BODY)
_408_BODY = b"the request took too long to send\n"
_TIMEOUT_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(_408_BODY), _408_BODY))


class LogBudget:
    """The first event of a kind is logged at once; later ones at most once per ``interval_s``, with the
    number left unlogged since. A flood (an attack, a full descriptor table) costs a line a minute."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._last: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def event(self, kind: str, message: str, level: int = logging.WARNING) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        unlogged = self._unlogged.pop(kind, 0)
        more = f" ({unlogged} more like it since the last report, {now - last:.0f} s ago)" if unlogged else ""
        self.logger.log(level, "%s%s", message, more)
        self._last[kind] = now


budget = LogBudget(log)


def open_file_limit() -> int | None:
    """The soft RLIMIT_NOFILE of this process, or None when unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limits(max_connections: int | None = None, backlog: int | None = None,
                      fd_limit: int | None = None) -> tuple[int, int]:
    """``(max_connections, backlog)`` that fit the open-file limit (``fd_limit``, default this process's).

    asyncio accepts up to ``backlog`` connections in one go before any of them is looked at, so the cap
    alone cannot stop a burst: open connections plus one backlog of new ones must fit below the limit,
    less :data:`FD_RESERVE`. Defaults: 1000 connections and a backlog of 2048 (uvicorn's), lowered to fit;
    explicit values that do not fit are lowered too, with a warning.
    """
    fd_limit = open_file_limit() if fd_limit is None else fd_limit
    cap, queue = max_connections or DEFAULT_MAX_CONNECTIONS, backlog or DEFAULT_BACKLOG
    if fd_limit is None:
        return cap, queue
    room = max(2, fd_limit - FD_RESERVE)
    if cap + queue > room:
        queue = min(queue, max(1, room // 4))
        cap = max(1, min(cap, room - queue))
        if max_connections or backlog:
            log.warning("max_connections %s and backlog %s do not fit the open-file limit (ulimit -n %d); using %d "
                        "and %d", max_connections or "default", backlog or "default", fd_limit, cap, queue)
    return cap, queue


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a read deadline per request and a cap on open connections."""

    def __init__(self, *args: Any, read_timeout_s: float, max_connections: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.read_timeout_s, self.max_connections = read_timeout_s, max_connections
        self.reading_since: float | None = None  # loop time the unfinished request began; None when none is
        self._deadline: asyncio.TimerHandle | None = None
        self._bytes_of_request = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_reading()
        if len(self.connections) > self.max_connections and self._open_connections() > self.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.reading_since is None:  # the first bytes of the next request on a kept-alive connection
            self._start_reading()
        self._bytes_of_request += len(data)
        super().data_received(data)
        if self.conn.their_state not in _READING:  # read in full (or the connection is over)
            self._stop_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reading()
        super().connection_lost(exc)

    def _start_reading(self) -> None:
        self.reading_since, self._bytes_of_request = self.loop.time(), 0
        self._deadline = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _stop_reading(self) -> None:
        self.reading_since = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.reading_since is None or self.transport.is_closing():
            return
        started = self._bytes_of_request > 0 and self.conn.their_state is h11.IDLE  # no app is answering yet
        budget.event("read-timeout", f"closed a connection that sent no complete request within "
                     f"{self.read_timeout_s:g} s (a slow or idle client)")
        self._close(_TIMEOUT_408 if started else b"")

    def _open_connections(self) -> int:
        """Connections not already closing (a closed one leaves the set only on the loop's next turn)."""
        return sum(not c.transport.is_closing() for c in self.connections)

    def _make_room(self) -> None:
        """Close the connection that has waited longest on an unfinished request, or else this new one."""
        waiting = [c for c in self.connections
                   if c is not self and getattr(c, "reading_since", None) is not None and not c.transport.is_closing()]
        if waiting:
            oldest = min(waiting, key=lambda c: c.reading_since)
            budget.event("evicted", f"{self.max_connections} connections open: closed the one that had waited "
                         "longest on an unfinished request to make room")
            oldest._close(b"")
        else:
            budget.event("refused", f"{self.max_connections} connections open, all busy or idle between requests: "
                         "refused a new one")
            self._close(b"")

    def _close(self, last_words: bytes) -> None:
        self._stop_reading()
        if last_words:
            self.transport.write(last_words)
        self.transport.close()


def guarded_h11(read_timeout_s: float, max_connections: int) -> Callable[..., GuardedH11Protocol]:
    """The protocol factory to pass as ``uvicorn.Config(http=...)``."""
    return functools.partial(GuardedH11Protocol, read_timeout_s=read_timeout_s, max_connections=max_connections)


def _is_accept_error(context: dict[str, Any]) -> bool:
    exc = context.get("exception")
    return isinstance(exc, OSError) and ("accept" in str(context.get("message", ""))
                                         or "_accept_connection" in repr(context.get("handle", "")))


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Route the loop's accept errors (EMFILE...) through :data:`budget`; other errors go where they went."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _is_accept_error(context):
            exc = context["exception"]
            name = errno.errorcode.get(exc.errno or 0, "?")
            budget.event("accept", f"cannot accept new connections: {exc.strerror or exc} ({name}); they wait in "
                         "the listen backlog. Raise the open-file limit (ulimit -n) or lower --max-connections",
                         logging.ERROR)
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
