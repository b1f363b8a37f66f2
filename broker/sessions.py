"""Connected capsules: one :class:`CapsuleSession` per authenticated worker connection.

A session is what every syscall handler receives as its first argument: it names the capsule
(never what a frame claims: the ZeroMQ identity of the connection decides), and holds the
capsule's per-load state and its queue of invocations.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from astrid_core.logfile import LogFile, capsule_tag
from astrid_core.manifest import Manifest
from astrid_core.wire import HelloInfo
from broker.gate import CapabilityGate

if TYPE_CHECKING:
    from broker.kernel import Kernel


class SessionExtension:
    """Per-capsule state of one syscall group (subscriptions, uplinks, processes, ...).

    Created on first use by :meth:`CapsuleSession.extension` and closed when the capsule's
    session ends (its worker exited, was replaced, or the broker stops).
    """

    def __init__(self, session: CapsuleSession) -> None:
        self.session = session

    def close(self) -> None:
        """Release what the extension holds; called once."""


E = TypeVar("E", bound=SessionExtension)


class InvocationFailed(Exception):
    """An invocation trapped, or its worker went away; ``text`` is what the caller sees."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass(eq=False)
class Invocation:
    export: str
    data: bytes
    caller: dict[str, Any]
    future: asyncio.Future[bytes]
    seq: int = 0


@dataclass(eq=False)
class CapsuleSession:
    kernel: Kernel
    identity: bytes
    info: HelloInfo
    manifest: Manifest
    config: dict[str, str]
    gate: CapabilityGate
    log: LogFile
    #: ``$ASTRID_HOME/shared`` if it existed when the capsule connected (``global://`` is mounted
    #: at load time only, as in the reference), else None.
    global_root: Path | None
    #: Per-load instance UUID: the ``source_id`` of this capsule's IPC messages.
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    ready: bool = False
    closed: bool = False
    current: Invocation | None = None
    queue: deque[Invocation] = field(default_factory=deque)
    _extensions: dict[type[SessionExtension], SessionExtension] = field(default_factory=dict)

    def extension(self, kind: type[E]) -> E:
        """The session's ``kind`` state, created on first use."""
        value = self._extensions.get(kind)
        if value is None:
            value = self._extensions[kind] = kind(self)
        assert isinstance(value, kind)
        return value

    def close_extensions(self) -> None:
        extensions = list(self._extensions.values())
        self._extensions.clear()
        for extension in extensions:
            extension.close()

    @property
    def name(self) -> str:
        return self.info.capsule

    @property
    def generation(self) -> int:
        return self.info.generation

    @property
    def tag(self) -> str:
        """``<capsule>[<generation>]``, as log records name it."""
        return capsule_tag(self.info.capsule, self.info.generation)

    @property
    def namespace(self) -> str:
        """The capsule's KV namespace."""
        return f"capsule:{self.info.capsule}"

    @property
    def capsule_dir(self) -> Path:
        return Path(self.info.capsule_dir)

    @property
    def caller(self) -> dict[str, Any]:
        """The caller of the invocation in progress (DESIGN §6.8); ``{}`` when there is none."""
        return self.current.caller if self.current is not None else {}

    def fail_invocations(self, text: str) -> None:
        pending = [self.current, *self.queue] if self.current else list(self.queue)
        self.current = None
        self.queue.clear()
        for invocation in pending:
            if invocation is not None and not invocation.future.done():
                invocation.future.set_exception(InvocationFailed(text))


class SessionRegistry:
    def __init__(self) -> None:
        self._by_identity: dict[bytes, CapsuleSession] = {}
        self._by_name: dict[str, CapsuleSession] = {}

    def by_identity(self, identity: bytes) -> CapsuleSession | None:
        return self._by_identity.get(identity)

    def by_name(self, name: str) -> CapsuleSession | None:
        return self._by_name.get(name)

    def by_uuid(self, value: uuid.UUID) -> CapsuleSession | None:
        return next((s for s in self._by_name.values() if s.uuid == value), None)

    def add(self, session: CapsuleSession) -> None:
        self._by_identity[session.identity] = session
        self._by_name[session.name] = session

    def remove(self, session: CapsuleSession) -> None:
        if self._by_identity.get(session.identity) is session:
            del self._by_identity[session.identity]
        if self._by_name.get(session.name) is session:
            del self._by_name[session.name]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __iter__(self) -> Iterator[CapsuleSession]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)
