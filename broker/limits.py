"""Limits of the ABI that more than one syscall group uses (syscalls.md §6)."""

from typing import Final

#: Generic guest payload (values, contents, requests).
MAX_GUEST_PAYLOAD_LEN: Final = 10 * 1024 * 1024
#: KV keys and prefixes, get_config keys, has_secret requests.
MAX_KEY_LEN: Final = 4096
#: Filesystem paths.
MAX_PATH_LEN: Final = 4096
#: astrid_log message and level.
MAX_LOG_MESSAGE_LEN: Final = 65536
MAX_LOG_LEVEL_LEN: Final = 64
