"""Handlers of the ``fs`` syscall group (none yet: each answers "<name> is not implemented yet")."""
