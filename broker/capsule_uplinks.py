"""A capsule's registered uplinks (``astrid_uplink_register``), kept for its session."""

from __future__ import annotations

from astrid_core.uplink import UplinkDescriptor, UplinkId
from broker.sessions import CapsuleSession, SessionExtension


class CapsuleUplinks(SessionExtension):
    def __init__(self, session: CapsuleSession) -> None:
        super().__init__(session)
        self.descriptors: dict[UplinkId, UplinkDescriptor] = {}

    def has(self, name: str, platform: str) -> bool:
        return any(d.name == name and d.platform == platform for d in self.descriptors.values())

    def add(self, descriptor: UplinkDescriptor) -> None:
        self.descriptors[descriptor.id] = descriptor
