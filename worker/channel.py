"""The worker's connection to the broker: one ZeroMQ DEALER, used from the main thread only.

A worker runs one guest at a time. While the guest waits in a host call for its answer, the broker
may already send the next invocation: it is queued and served after the current one.

When the broker goes away (DESIGN §4: "a worker that loses the broker fails the pending call with
a clear trap and reconnects when the broker is back"), a host call in flight fails with
:class:`BrokerLost` (the guest traps with its text) and :meth:`BrokerChannel.reconnect` waits for
the broker the supervisor restarts on the same endpoint: the DEALER reconnects by itself, and the
worker authenticates again with the same hello (its secret still verifies: the master key is the
same). Every successful hello starts a new *epoch*; an invocation is answered only in the epoch
it arrived in, so an answer never reaches a broker (or connection) that did not ask for it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

import zmq

from astrid_core import wire
from astrid_core.syscalls import SYSCALLS
from astrid_core.wire import HelloInfo, Invoke, Reply, Shutdown, Status

log = logging.getLogger("astrid.worker")

#: How long a worker waits for the broker to answer its hello.
HELLO_TIMEOUT_S = 15.0
#: How long a worker that lost the broker waits for one to answer its hello again before it
#: gives up (and exits for a restart). Read at call time.
RECONNECT_TIMEOUT_S = 60.0
#: How often a waiting worker checks that the broker connection is still up.
LIVENESS_SLICE_MS = 1000

#: The trap text of a host call in flight when the connection to the broker drops.
LOST_TEXT = "lost the connection to the broker"


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
        #: Both sockets, for waits off the hot path (idle, reconnecting).
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._seq = 0
        self._lost = False
        #: Invocations received and not served yet, each with the epoch it arrived in.
        self.invocations: deque[tuple[int, Invoke]] = deque()
        self.shutdown_reason: str | None = None
        self.welcome: dict[str, Any] = {}
        #: Incremented by every successful hello (0: not authenticated yet).
        self.epoch = 0

    # ----------------------------------------------------------------------------------------

    @property
    def lost(self) -> bool:
        """Whether the connection to the broker dropped (since the last hello)."""
        return self._lost

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _check_monitor(self) -> bool:
        """Look at the monitor without waiting; True once the connection is known lost."""
        if not self._lost and self._monitor.poll(0):
            self._monitor.recv_multipart()
            self._lost = True
        return self._lost

    def _forget_disconnects(self) -> None:
        """Drop the disconnect events seen so far: they concern connections before the hello
        that is about to be sent."""
        while self._monitor.poll(0):
            self._monitor.recv_multipart()
        self._lost = False

    def _receive(self, timeout_ms: int | None, watch: bool = False) -> wire.BrokerFrame | None:
        """Wait for one frame from the broker; ``None`` on timeout.

        Only the DEALER is polled on the hot path (polling it together with the monitor socket
        doubles the cost of a host call); the monitor is looked at whenever a slice of
        :data:`LIVENESS_SLICE_MS` passes without a frame, so a lost broker is noticed within
        that time. With ``watch`` (waits off the hot path), both are polled and a lost broker
        is noticed at once. Raises :class:`BrokerLost` when the connection drops.
        """
        while True:
            if self._lost:
                raise BrokerLost(LOST_TEXT)
            slice_ms = (
                LIVENESS_SLICE_MS if timeout_ms is None else min(timeout_ms, LIVENESS_SLICE_MS)
            )
            if watch:
                ready = dict(self._poller.poll(slice_ms))
                frame_ready = self._socket in ready
            else:
                frame_ready = bool(self._socket.poll(slice_ms))
            if frame_ready:
                raw = self._socket.recv()
                try:
                    return wire.decode_broker_frame(raw)
                except wire.FrameError as exc:
                    log.error("dropping a malformed frame from the broker: %s", exc)
                    continue
            if self._check_monitor():
                continue
            if timeout_ms is not None:
                timeout_ms -= slice_ms
                if timeout_ms <= 0:
                    return None

    def _dispatch_unsolicited(self, frame: wire.BrokerFrame) -> None:
        if isinstance(frame, Invoke):
            self.invocations.append((self.epoch, frame))
        elif isinstance(frame, Shutdown):
            self.shutdown_reason = frame.reason
        else:
            log.warning("dropping a stale answer (seq %d) from the broker", frame.seq)

    # ----------------------------------------------------------------------------------------

    def hello(self, timeout_s: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
        """Authenticate; returns the broker's welcome (a map) and starts a new epoch.

        The broker invokes nothing before it answered the hello, so an invocation that arrives
        before the answer was sent by an earlier broker (or connection): it is dropped.
        """
        seq = self._next_seq()
        self._socket.send(wire.encode_hello(seq, self.info, self._secret))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerLost(f"the broker did not answer within {timeout_s:.0f} s")
            frame = self._receive(int(remaining * 1000) + 1, watch=True)
            if frame is None:
                continue
            if isinstance(frame, Reply) and frame.seq == seq:
                if frame.status == Status.OK:
                    assert isinstance(frame.payload, bytes)
                    welcome = wire.decode_welcome(frame.payload)
                    self.welcome = welcome
                    self.epoch += 1
                    return welcome
                raise HelloRejected(str(frame.payload))
            if isinstance(frame, Invoke):
                log.warning(
                    "dropping invocation %d of %s: it predates this connection",
                    frame.seq,
                    frame.export,
                )
                continue
            self._dispatch_unsolicited(frame)

    def reconnect(self, timeout_s: float | None = None) -> dict[str, Any]:
        """After :class:`BrokerLost`: wait for a broker on the same endpoint and authenticate
        again; returns its welcome.

        The invocations not served yet are dropped (the broker that sent them is gone). Raises
        :class:`BrokerLost` when no broker answered within ``timeout_s`` (default
        :data:`RECONNECT_TIMEOUT_S`), :class:`HelloRejected` when the broker refuses the hello.
        """
        limit = RECONNECT_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        for _, invocation in self.invocations:
            log.warning(
                "dropping invocation %d of %s: the broker that sent it is gone",
                invocation.seq,
                invocation.export,
            )
        self.invocations.clear()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerLost(f"{LOST_TEXT}; no broker answered within {limit:.0f} s")
            self._forget_disconnects()
            try:
                return self.hello(remaining)
            except BrokerLost:
                # The hello timed out (the loop ends) or the new connection dropped too (the
                # hello went with it): say hello again.
                continue

    def call(
        self, op: int, args: list[bytes], deadline: float | None = None
    ) -> tuple[bool, bytes | str]:
        """Forward one syscall; returns ``(True, result)`` or ``(False, error text)``.

        ``deadline`` (a :func:`time.monotonic` value) is the end of the invocation's call
        timeout: the host call gives up then, so that a guest waiting on the broker traps with a
        timeout instead of being stuck where Extism cannot interrupt it (the broker's late
        answer is dropped). Raises :class:`BrokerLost` if the broker goes away while the call is
        pending.
        """
        if self.shutdown_reason is not None:
            return False, "capsule unloading"
        seq = self._next_seq()
        self._socket.send(wire.encode_call(seq, op, args))
        reauthenticated = False
        while True:
            if deadline is None:
                frame = self._receive(None)
            else:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                frame = self._receive(remaining_ms) if remaining_ms > 0 else None
                if frame is None:
                    return False, (
                        f"timeout: the call timeout expired while {SYSCALLS[op].name} was "
                        "waiting for the broker"
                    )
            if isinstance(frame, Reply) and frame.seq == seq:
                if frame.status == Status.OK:
                    return True, frame.payload
                if frame.status == Status.REAUTH and self.info.has_run:
                    # A run loop cannot resume on a new broker: its host processes,
                    # subscriptions and handles died with the old one. A new worker starts
                    # the run again.
                    self._lost = True
                    raise BrokerLost(f"{LOST_TEXT}: the broker restarted during the run")
                if frame.status == Status.REAUTH and not reauthenticated:
                    # The broker restarted and does not know this connection: authenticate
                    # again and resend (the call was not executed). The invocation in progress
                    # came from an earlier epoch: its answer will be dropped.
                    reauthenticated = True
                    self._forget_disconnects()
                    self.hello()
                    seq = self._next_seq()
                    self._socket.send(wire.encode_call(seq, op, args))
                    continue
                return False, str(frame.payload)
            if frame is not None:
                self._dispatch_unsolicited(frame)
                if self.shutdown_reason is not None:
                    return False, "capsule unloading"

    def next_invocation(self) -> tuple[int, Invoke]:
        """Block until the broker sends an invocation; returns it with its epoch. Raises
        ShutdownRequested / BrokerLost."""
        while True:
            if self.shutdown_reason is not None:
                raise ShutdownRequested(self.shutdown_reason)
            if self.invocations:
                return self.invocations.popleft()
            frame = self._receive(None, watch=True)
            if frame is not None:
                self._dispatch_unsolicited(frame)

    def answer(self, seq: int, ok: bool, payload: bytes | str, epoch: int | None = None) -> bool:
        """Send the outcome of invocation ``seq``; False (nothing sent) when the invocation came
        in an earlier ``epoch`` or the connection it came on is known to be lost."""
        if epoch is not None and (epoch != self.epoch or self._check_monitor()):
            return False
        self._socket.send(wire.encode_answer(seq, ok, payload))
        return True

    def close(self) -> None:
        self._socket.close(linger=0)
        self._monitor.close(linger=0)
        self._context.term()
