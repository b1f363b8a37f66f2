"""Handlers of the ``http`` syscall group (none yet: each answers "<name> is not implemented yet")."""
