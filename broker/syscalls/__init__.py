"""Syscall handlers, one module per group of the syscall table (``astrid_core.syscalls.Group``).

A handler is named exactly like its syscall (``astrid_kv_get`` in ``kv.py``), takes the calling
capsule's :class:`~broker.sessions.CapsuleSession` and the raw argument bytes, and returns the
result bytes (``None`` for void syscalls) or an awaitable of them; it raises
:class:`~broker.errors.SyscallError` to make the guest trap. Checks run in the order of
``spec/syscalls.md`` with its limits and error texts. :mod:`broker.dispatch` maps the table onto
these modules.
"""
