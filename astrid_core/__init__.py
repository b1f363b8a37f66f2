"""astrid_core: the shared vocabulary of the Astrid capsule runtime.

Every other package (broker, worker, supervisor) imports only from here: the syscall table, the
worker/broker wire protocol, the manifest model, directories, session authentication and the
environment policy.
"""

#: Version of the Astrid ABI vocabulary this package mirrors (the reference's astrid-core).
ASTRID_CORE_VERSION = "0.2.0"
