"""Handlers of the ``process`` syscall group (none yet: each answers "<name> is not implemented yet")."""
