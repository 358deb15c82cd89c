"""Server-sent events to every open tab: the queue, a job's progress, runs made, notes.

Jobs run in worker threads; each browser tab listens on its own asyncio queue in the server's event loop.
`publish` (any thread) hands an event to every listener through `call_soon_threadsafe`. A tab that falls
behind loses stale progress events first (only the newest progress matters), never queue or run events.
A tab that connects (or reconnects after a reload) first gets `snapshot()`, so it shows a running job at once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator, Callable

MAX_PENDING = 64  # events waiting for one slow tab before its stale progress events are dropped
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser from closing an idle stream


def sse(event: str, data: Any) -> bytes:
    """One event in the text/event-stream format (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n".encode()


class _Listener:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()

    def put(self, item: tuple[str, Any] | None) -> None:
        q = self.queue
        if item is not None and item[0] == "progress" and q.qsize() >= MAX_PENDING:
            return  # this tab is behind: skip a progress event, the next one supersedes it
        q.put_nowait(item)


class Broadcaster:
    """Fan-out of events from worker threads to every connected tab."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: set[_Listener] = set()
        self._closed = False
        self.snapshot: Callable[[], list[tuple[str, Any]]] = lambda: []

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def publish(self, event: str, data: Any) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.put, (event, data))
            except RuntimeError:  # its loop is closed: the server is going down
                pass

    def close(self) -> None:
        """End every stream (the server is stopping: open streams would keep it waiting)."""
        with self._lock:
            self._closed = True
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.put, None)
            except RuntimeError:
                pass

    async def stream(self, is_disconnected: Callable[[], Any] | None = None) -> AsyncIterator[bytes]:
        """The bytes of one tab's event stream: the snapshot, then every event, until the tab or server goes."""
        listener = _Listener(asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                return
            self._listeners.add(listener)
        try:
            yield b"retry: 1000\n\n"  # reconnect quickly after a server restart
            for event, data in self.snapshot():
                yield sse(event, data)
            while True:
                try:
                    item = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if is_disconnected is not None and await is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if item is None:
                    return
                yield sse(*item)
        finally:
            with self._lock:
                self._listeners.discard(listener)


__all__ = ["Broadcaster", "sse", "KEEPALIVE_S"]
