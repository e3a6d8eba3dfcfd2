"""Job kinds and their typed contracts: one module per kind (generate, train), one registry.

Importing any of them registers the kinds with the queue (storage.job_kinds).
"""

from engine.usecases.jobs import registry as registry  # registers the kinds with the queue on import
