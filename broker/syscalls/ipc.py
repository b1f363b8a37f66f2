"""Handlers of the ``ipc`` syscall group (none yet: each answers "<name> is not implemented yet")."""
