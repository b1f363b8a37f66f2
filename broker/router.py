"""The broker's side of the wire: one ZeroMQ ROUTER serving every worker.

The socket's file descriptor is watched by the asyncio loop; each wakeup drains the socket without
blocking. Synchronous handlers (the common case: KV, log, clock) are answered inline, so a host
call costs one decode, one handler call and one send. Handlers that must wait return an awaitable
and are answered when it completes; the loop never blocks on one capsule.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from pathlib import Path
from typing import Any

import zmq

from astrid_core import wire
from astrid_core.manifest import ManifestError, load_manifest, validate_capsule_id
from astrid_core.wire import Answer, Call, Hello, Status
from broker.capsule_ipc import CapsuleIpc, TooManyInterceptors
from broker.config import MissingConfig, preload_env_file, resolve_config
from broker.dispatch import build_table
from broker.errors import SyscallError
from broker.gate import CapabilityGate
from broker.kernel import Kernel
from broker.lifecycle_hooks import VersionStore, lifecycle_call
from broker.sessions import CapsuleSession, Invocation, InvocationFailed

log = logging.getLogger("astrid.broker")

#: Frames handled per wakeup before yielding to the rest of the loop.
_BATCH = 256


class HelloRefused(Exception):
    pass


class WorkerRouter:
    def __init__(self, kernel: Kernel, endpoint: str) -> None:
        self.kernel = kernel
        self.endpoint = endpoint
        self._table = build_table()
        self._context = zmq.Context(io_threads=1)
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # libzmq drops a peer that sends more than a frame may hold, before buffering it.
        self._socket.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
        self._socket.bind(endpoint)
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint.removeprefix("ipc://"), 0o600)
        self._fd = int(self._socket.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._invoke_seq = 0
        self._pidfds: dict[CapsuleSession, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------------------------------
    # Socket plumbing

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._drain)
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        # The ZeroMQ FD is edge-triggered: after a send outside the drain loop, messages may be
        # pending without a new edge, so look again.
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    def _drain(self) -> None:
        self._drain_scheduled = False
        socket = self._socket
        for _ in range(_BATCH):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.error("receive failed: %s", exc)
                return
            if len(frames) != 2:
                log.warning(
                    "dropped a %d-part message (expected identity + one frame)", len(frames)
                )
                continue
            try:
                self._handle(frames[0], frames[1])
            except Exception:
                # One bad message must not stop the loop (the reader would never fire again
                # for messages already queued).
                log.exception("failed to handle a message")
        self._schedule_drain()

    def send(self, identity: bytes, data: bytes) -> None:
        try:
            self._socket.send_multipart((identity, data), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EHOSTUNREACH, zmq.EAGAIN):
                log.debug("could not send to a departed worker: %s", exc)
            else:
                log.error("send failed: %s", exc)

    def _send_later(self, identity: bytes, data: bytes) -> None:
        """Send from outside the drain loop."""
        self.send(identity, data)
        self._schedule_drain()

    # ----------------------------------------------------------------------------------------
    # Frames

    def _handle(self, identity: bytes, raw: bytes) -> None:
        try:
            frame = wire.decode_worker_frame(raw)
        except wire.FrameError as exc:
            session = self.kernel.sessions.by_identity(identity)
            peer = f"capsule '{session.name}'" if session else "an unauthenticated peer"
            log.warning("malformed frame from %s: %s", peer, exc.message)
            if exc.seq is not None:
                self.send(identity, wire.encode_error(exc.seq, f"wire error: {exc.message}"))
            return
        if type(frame) is Call:
            session = self.kernel.sessions.by_identity(identity)
            if session is None:
                log.info("call %s from an unauthenticated peer refused", frame.syscall.name)
                self.send(
                    identity,
                    wire.encode_reply(
                        frame.seq, Status.REAUTH, "not authenticated: send hello first"
                    ),
                )
                return
            self._call(session, frame)
        elif type(frame) is Hello:
            self._hello(identity, frame)
        else:
            assert isinstance(frame, Answer)
            session = self.kernel.sessions.by_identity(identity)
            if session is None:
                log.warning("dropped an answer from an unauthenticated peer")
                return
            self._answer(session, frame)

    def _call(self, session: CapsuleSession, call: Call) -> None:
        identity = session.identity
        try:
            result = self._table[call.syscall.index](session, *call.args)
        except SyscallError as exc:
            self.send(identity, wire.encode_error(call.seq, exc.text))
            return
        except Exception as exc:
            log.exception("%s failed for capsule '%s'", call.syscall.name, session.name)
            self.send(identity, wire.encode_error(call.seq, f"internal broker error: {exc}"))
            return
        if result is None:
            self.send(identity, wire.encode_ok(call.seq, b""))
        elif type(result) is bytes:
            self.send(identity, wire.encode_ok(call.seq, result))
        else:
            task = asyncio.ensure_future(self._finish(session, call, result))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, session: CapsuleSession, call: Call, pending: Any) -> None:
        try:
            result = await pending
        except SyscallError as exc:
            data = wire.encode_error(call.seq, exc.text)
        except Exception as exc:
            log.exception("%s failed for capsule '%s'", call.syscall.name, session.name)
            data = wire.encode_error(call.seq, f"internal broker error: {exc}")
        else:
            data = wire.encode_ok(call.seq, result or b"")
        if not session.closed:
            self._send_later(session.identity, data)

    # ----------------------------------------------------------------------------------------
    # Authentication

    def _hello(self, identity: bytes, hello: Hello) -> None:
        try:
            session = self._admit(identity, hello)
        except HelloRefused as exc:
            log.warning("refused a hello for capsule '%s': %s", hello.info.capsule, exc)
            self.send(identity, wire.encode_error(hello.seq, f"hello refused: {exc}"))
            return
        welcome: dict[str, Any] = {"capsule_uuid": str(session.uuid), "broker_pid": os.getpid()}
        lifecycle = self._start_lifecycle(session)
        if lifecycle is not None:
            welcome["lifecycle"] = lifecycle
        self.send(identity, wire.encode_reply(hello.seq, Status.OK, wire.encode_welcome(welcome)))
        log.info(
            "capsule '%s' connected (generation %d, pid %d)",
            session.name,
            session.generation,
            session.info.pid,
        )

    def _admit(self, identity: bytes, hello: Hello) -> CapsuleSession:
        info = hello.info
        if hello.version != wire.WIRE_VERSION:
            raise HelloRefused(
                f"wire version {hello.version} is not supported (this broker speaks "
                f"{wire.WIRE_VERSION})"
            )
        if not wire.verify_worker_secret(self.kernel.master_key, info, hello.secret):
            raise HelloRefused("invalid worker secret")
        sessions = self.kernel.sessions
        existing = sessions.by_name(info.capsule)
        if existing is not None and existing.generation > info.generation:
            raise HelloRefused(
                f"stale generation {info.generation} (generation {existing.generation} is running)"
            )
        if (
            existing is not None
            and existing.generation == info.generation
            and existing.info.pid == info.pid
            and existing.info.capsule_dir == info.capsule_dir
        ):
            # The running worker says hello again (it thought the broker was gone, or its
            # connection was reset): resume its session, with its state and host processes.
            if existing.identity != identity:
                # A new connection: what the worker was asked on the old one, it drops.
                sessions.remove(existing)
                existing.identity = identity
                sessions.add(existing)
                current, existing.current = existing.current, None
                if current is not None and not current.future.done():
                    current.future.set_exception(
                        InvocationFailed(
                            f"capsule '{existing.name}' lost its connection to the broker"
                        )
                    )
                assert self._loop is not None
                self._loop.call_soon(self._pump, existing)  # after the welcome is sent
            return existing
        capsule_dir = Path(info.capsule_dir)
        try:
            validate_capsule_id(info.capsule)
            manifest = load_manifest(capsule_dir / "Capsule.toml")
        except (ValueError, ManifestError) as exc:
            raise HelloRefused(str(exc)) from None
        if manifest.package.name != info.capsule:
            raise HelloRefused(
                f"the manifest in {capsule_dir} names '{manifest.package.name}', "
                f"not '{info.capsule}'"
            )
        kernel = self.kernel
        namespace = f"capsule:{info.capsule}"
        preload_env_file(kernel.kv, namespace, capsule_dir)
        try:
            config = resolve_config(
                manifest, kernel.kv, namespace, kernel.home.socket_path(), kernel.home.root()
            )
        except MissingConfig as exc:
            raise HelloRefused(str(exc)) from None
        try:
            pidfd = os.pidfd_open(info.pid)
        except OSError:
            raise HelloRefused(f"no process with pid {info.pid}") from None
        global_root = kernel.global_root()
        gate = CapabilityGate(info.capsule, manifest.capabilities, kernel.workspace, global_root)
        session = CapsuleSession(
            kernel=kernel,
            identity=identity,
            info=info,
            manifest=manifest,
            config=config,
            gate=gate,
            log=kernel.capsule_log(info.capsule),
            global_root=global_root,
        )
        if info.has_run and manifest.interceptors:
            try:
                session.extension(CapsuleIpc).subscribe_interceptors()
            except TooManyInterceptors as exc:
                session.close_extensions()
                os.close(pidfd)
                raise HelloRefused(str(exc)) from None
        for previous in (existing, sessions.by_identity(identity)):
            if previous is not None:
                self.close_session(previous, f"capsule '{previous.name}' was replaced")
        sessions.add(session)
        for hook in kernel.on_connect:
            hook(session)
        self._pidfds[session] = pidfd
        assert self._loop is not None
        self._loop.add_reader(pidfd, self._worker_exited, session)
        return session

    def _start_lifecycle(self, session: CapsuleSession) -> dict[str, Any] | None:
        """Announce the install/upgrade hook the worker must run first, if one is due.

        The hook becomes the capsule's current invocation (so elicitation is allowed during it
        and later invocations queue behind it); its answer records the installed version.
        """
        versions = self.kernel.service(VersionStore)
        version = session.manifest.package.version
        call = lifecycle_call(versions.installed(session.name), version)
        if call is None:
            return None
        assert self._loop is not None
        self._invoke_seq += 1
        invocation = Invocation(call.export, call.input, {}, self._loop.create_future())
        invocation.seq = self._invoke_seq
        session.current = invocation

        def finished(future: asyncio.Future[bytes]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            versions.record(session.name, version)
            log.info("capsule '%s' %s %s done", session.name, call.export, version)

        invocation.future.add_done_callback(finished)
        return {"seq": invocation.seq, "export": call.export, "input": call.input}

    def _worker_exited(self, session: CapsuleSession) -> None:
        log.info("capsule '%s' (generation %d) exited", session.name, session.generation)
        self.close_session(session, f"capsule '{session.name}' stopped: its worker exited")

    def close_session(self, session: CapsuleSession, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self.kernel.sessions.remove(session)
        session.close_extensions()
        for hook in self.kernel.on_disconnect:
            hook(session)
        pidfd = self._pidfds.pop(session, None)
        if pidfd is not None:
            if self._loop is not None:
                self._loop.remove_reader(pidfd)
            os.close(pidfd)
        session.fail_invocations(reason)

    # ----------------------------------------------------------------------------------------
    # Invocations (broker → worker)

    async def invoke(
        self, session: CapsuleSession, export: str, data: bytes, caller: dict[str, Any]
    ) -> bytes:
        """Run a guest export in the capsule's worker; raises InvocationFailed with the trap text.

        Invocations of one capsule run one at a time, in order; the broker keeps the queue so that
        it always knows which invocation (and caller) a host call belongs to.
        """
        if session.closed:
            raise InvocationFailed(f"capsule '{session.name}' is not running")
        assert self._loop is not None
        invocation = Invocation(export, data, caller, self._loop.create_future())
        session.queue.append(invocation)
        self._pump(session)
        return await invocation.future

    def _pump(self, session: CapsuleSession) -> None:
        while session.current is None and session.queue:
            invocation = session.queue.popleft()
            if invocation.future.done():  # the caller gave up while queued
                continue
            self._invoke_seq += 1
            invocation.seq = self._invoke_seq
            session.current = invocation
            self._send_later(
                session.identity,
                wire.encode_invoke(
                    invocation.seq,
                    invocation.export,
                    invocation.data,
                    {"caller": invocation.caller},
                ),
            )

    def _answer(self, session: CapsuleSession, answer: Answer) -> None:
        invocation = session.current
        if invocation is None or invocation.seq != answer.seq:
            log.warning("dropped a stale answer from capsule '%s'", session.name)
            return
        session.current = None
        if not invocation.future.done():
            if answer.ok:
                assert isinstance(answer.payload, bytes)
                invocation.future.set_result(answer.payload)
            else:
                invocation.future.set_exception(InvocationFailed(str(answer.payload)))
        self._pump(session)

    def shutdown_workers(self, reason: str) -> None:
        for session in self.kernel.sessions:
            self.send(session.identity, wire.encode_shutdown(reason))

    def close(self) -> None:
        for session in list(self.kernel.sessions):
            self.close_session(session, "the broker is shutting down")
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._socket.close(linger=0)
        self._context.term()
