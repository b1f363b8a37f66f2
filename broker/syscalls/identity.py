"""Handlers of the ``identity`` syscall group (none yet: each answers "<name> is not implemented yet")."""
