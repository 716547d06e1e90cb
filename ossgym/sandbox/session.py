"""The caller-driven session API's home named in the interface contract (PLAN.md): ``Session`` (one
worker, one untrusted program, driven from the caller) and ``Reply``. They are defined in pool.py, next to
the dispatch code that creates them; import them from here or from ``ossgym.sandbox``."""

from ossgym.sandbox.pool import Reply, Session

__all__ = ["Reply", "Session"]
