"""Handlers of the ``net`` syscall group (none yet: each answers "<name> is not implemented yet")."""
