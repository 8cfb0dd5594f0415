"""uvicorn's httptools protocol, sending a response's head and body in one write.

uvicorn (0.54, each of its HTTP/1.1 protocols) writes the status line and headers
on `http.response.start`, then the body on `http.response.body`: two writes, two
send() syscalls on a TCP_NODELAY socket, for a response whose body the app sends
right after its head (every JSON response here). Here the head waits: for the
next write of the same response, which it joins, or at the latest until the
event loop's next turn, when it goes out alone. So a streamed response's head
still goes out before its first chunk is ready, and each chunk as it is sent.

Only the head is held, and only by the transport its request's cycle writes
through: the body, a `100 Continue`, the protocol's own writes (a 400, the keep-alive
timeout, the WebSocket upgrade, which gets the socket's transport) go out as before.
A held head goes out before the cycle closes the connection (`Connection: close`,
an app that fails mid-response), and is dropped with the connection if the client
is gone.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

__all__ = ["OneWriteProtocol"]


class OneWriteProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose responses' heads go out with their bodies."""

    def on_headers_complete(self) -> None:
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # A new cycle, not yet running (its task starts on the loop's next turn); none
        # for a WebSocket upgrade. A HEAD response is a head alone: nothing to join.
        if cycle is not previous and cycle.scope["method"] != "HEAD":
            cycle.transport = cast(asyncio.Transport, _HeadHeld(self.transport, cycle))


class _HeadHeld:
    """One request's view of the transport: its response's head waits for the body."""

    __slots__ = ("_cycle", "_head", "_transport", "_written")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        # Weakly: the cycle holds this view as its transport, and a strong reference
        # back would leave every finished request (its scope, its state) to the
        # collector instead of freeing it by reference count.
        self._cycle = weakref.ref(cycle)
        self._head: bytes | None = None
        self._written = False  # the head has gone to the transport or to `_head`

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.writelines((head, data))
        elif not self._written and _started(self._cycle()):
            # uvicorn sets response_started before it writes the head: this is the head.
            self._written = True
            self._head = data
            asyncio.get_running_loop().call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """The held head, alone: the body did not follow it within the loop's turn."""
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():  # else the client is gone
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Whatever else a later uvicorn asks of the transport (get_extra_info, ...).
        return getattr(self._transport, name)


def _started(cycle: RequestResponseCycle | None) -> bool:
    return cycle is not None and cycle.response_started
