"""Handlers of the ``ipc`` syscall group.

None yet: each syscall of this group answers "<name> is not implemented yet".
"""
