"""The worker's connection to the broker: one ZeroMQ DEALER, used from the main thread only.

A worker runs one guest at a time. While the guest waits in a host call for its answer, the broker
may already send the next invocation: it is queued and served after the current one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import zmq

from astrid_core import wire
from astrid_core.wire import HelloInfo, Invoke, Reply, Shutdown, Status

log = logging.getLogger("astrid.worker")

#: How long a worker waits for the broker to answer its hello.
HELLO_TIMEOUT_S = 15.0
#: How often a waiting worker checks that the broker connection is still up.
LIVENESS_SLICE_MS = 1000


class BrokerLost(ConnectionError):
    """The broker went away (or never answered)."""


class HelloRejected(Exception):
    """The broker refused this worker; restarting it cannot help."""


class ShutdownRequested(Exception):
    """The broker asked this worker to stop."""


class BrokerChannel:
    def __init__(self, endpoint: str, info: HelloInfo, secret: bytes) -> None:
        self.endpoint = endpoint
        self.info = info
        self._secret = secret
        self._context = zmq.Context(io_threads=1)
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._socket.connect(endpoint)
        self._seq = 0
        self._lost = False
        self.invocations: deque[Invoke] = deque()
        self.shutdown_reason: str | None = None
        self.welcome: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        """Whether the connection to the broker dropped."""
        return self._lost

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _receive(self, timeout_ms: int | None) -> wire.BrokerFrame | None:
        """Wait for one frame from the broker; ``None`` on timeout.

        Only the DEALER is polled on the hot path (polling it together with the monitor socket
        doubles the cost of a host call); the monitor is looked at whenever a slice of
        :data:`LIVENESS_SLICE_MS` passes without a frame, so a lost broker is noticed within
        that time. Raises :class:`BrokerLost` when the connection drops.
        """
        while True:
            if self._lost:
                raise BrokerLost("lost the connection to the broker")
            slice_ms = (
                LIVENESS_SLICE_MS if timeout_ms is None else min(timeout_ms, LIVENESS_SLICE_MS)
            )
            if self._socket.poll(slice_ms):
                raw = self._socket.recv()
                try:
                    return wire.decode_broker_frame(raw)
                except wire.FrameError as exc:
                    log.error("dropping a malformed frame from the broker: %s", exc)
                    continue
            if self._monitor.poll(0):
                self._monitor.recv_multipart()
                self._lost = True
                continue
            if timeout_ms is not None:
                timeout_ms -= slice_ms
                if timeout_ms <= 0:
                    return None

    def _dispatch_unsolicited(self, frame: wire.BrokerFrame) -> None:
        if isinstance(frame, Invoke):
            self.invocations.append(frame)
        elif isinstance(frame, Shutdown):
            self.shutdown_reason = frame.reason
        else:
            log.warning("dropping a stale answer (seq %d) from the broker", frame.seq)

    # ----------------------------------------------------------------------------------------

    def hello(self, timeout_s: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        """Authenticate; returns the broker's welcome (a map)."""
        seq = self._next_seq()
        self._socket.send(wire.encode_hello(seq, self.info, self._secret))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerLost(f"the broker did not answer within {timeout_s:.0f} s")
            frame = self._receive(int(remaining * 1000) + 1)
            if frame is None:
                continue
            if isinstance(frame, Reply) and frame.seq == seq:
                if frame.status == Status.OK:
                    assert isinstance(frame.payload, bytes)
                    welcome = wire.decode_welcome(frame.payload)
                    self.welcome = welcome
                    return welcome
                raise HelloRejected(str(frame.payload))
            self._dispatch_unsolicited(frame)

    def call(self, op: int, args: list[bytes]) -> tuple[bool, bytes | str]:
        """Forward one syscall; returns ``(True, result)`` or ``(False, error text)``.

        Raises :class:`BrokerLost` if the broker goes away while the call is pending.
        """
        if self.shutdown_reason is not None:
            return False, "capsule unloading"
        seq = self._next_seq()
        self._socket.send(wire.encode_call(seq, op, args))
        reauthenticated = False
        while True:
            frame = self._receive(None)
            if isinstance(frame, Reply) and frame.seq == seq:
                if frame.status == Status.OK:
                    return True, frame.payload
                if frame.status == Status.REAUTH and not reauthenticated:
                    # The broker restarted and does not know this connection: authenticate
                    # again and resend (the call was not executed).
                    reauthenticated = True
                    self.hello()
                    seq = self._next_seq()
                    self._socket.send(wire.encode_call(seq, op, args))
                    continue
                return False, str(frame.payload)
            if frame is not None:
                self._dispatch_unsolicited(frame)
                if self.shutdown_reason is not None:
                    return False, "capsule unloading"

    def next_invocation(self) -> Invoke:
        """Block until the broker sends an invocation; raises ShutdownRequested / BrokerLost."""
        while True:
            if self.shutdown_reason is not None:
                raise ShutdownRequested(self.shutdown_reason)
            if self.invocations:
                return self.invocations.popleft()
            frame = self._receive(None)
            if frame is not None:
                self._dispatch_unsolicited(frame)

    def answer(self, seq: int, ok: bool, payload: bytes | str) -> None:
        self._socket.send(wire.encode_answer(seq, ok, payload))

    def close(self) -> None:
        self._socket.close(linger=0)
        self._monitor.close(linger=0)
        self._context.term()
