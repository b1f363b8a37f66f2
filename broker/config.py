"""A capsule's configuration: what ``astrid_get_config`` returns (kernel.md §1.8).

Resolved when the capsule connects: ``ASTRID_SOCKET_PATH`` (for a capsule whose ``net_bind``
entries name socket paths, the first of them: the path it may bind, DESIGN §6.2; otherwise the
broker's ``sessions/system.sock``) plus every ``[env.<KEY>]`` of the manifest, taken from the
capsule's KV (where ``.env.json`` in the capsule directory is pre-loaded on every load), else
from the manifest default. Every value is stored as a string and handed to
the guest JSON-encoded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from astrid_core.manifest import Manifest
from broker.capsule_net import allowed_socket_paths
from broker.kvstore import KvStore, StorageError

log = logging.getLogger("astrid.broker")

SOCKET_PATH_KEY = "ASTRID_SOCKET_PATH"
RESERVED_KEYS = frozenset({SOCKET_PATH_KEY})
ENV_FILE = ".env.json"


class MissingConfig(Exception):
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        super().__init__(f"Missing required environment variables: {', '.join(keys)}")


def preload_env_file(kv: KvStore, namespace: str, capsule_dir: Path) -> None:
    """Copy ``<capsule>/.env.json`` (a flat string → string map) into the capsule's KV."""
    path = capsule_dir / ENV_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return
    if not isinstance(data, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return
    for key, value in data.items():
        if not isinstance(value, str):
            log.warning("ignoring %s key %r: the value is not a string", path, key)
            continue
        try:
            kv.set(namespace, key, value.encode())
        except StorageError as exc:
            log.warning("ignoring %s key %r: %s", path, key, exc)


def _default_text(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def resolve_config(
    manifest: Manifest,
    kv: KvStore,
    namespace: str,
    socket_path: Path,
    home_root: Path | None = None,
) -> dict[str, str]:
    """Resolve the capsule's config; raises :class:`MissingConfig` naming what is missing.

    ``socket_path`` is the broker's ``sessions/system.sock``; ``home_root`` (``$ASTRID_HOME``,
    against which relative ``net_bind`` entries resolve) defaults to that socket's home, i.e.
    ``socket_path.parent.parent``.
    """
    root = socket_path.parent.parent if home_root is None else home_root
    bindable = allowed_socket_paths(manifest.capabilities.net_bind, root)
    config = {SOCKET_PATH_KEY: str(bindable[0] if bindable else socket_path)}
    missing: list[str] = []
    for key, definition in manifest.env.items():
        if key in RESERVED_KEYS:
            continue
        try:
            stored = kv.get(namespace, key)
        except StorageError:
            stored = None
        if stored is not None:
            try:
                config[key] = stored.decode("utf-8")
            except UnicodeDecodeError:
                missing.append(key)
            continue
        if len(definition.enum_values) > 1 or definition.default is None:
            missing.append(key)
            continue
        config[key] = _default_text(definition.default)
    if missing:
        raise MissingConfig(missing)
    return config
