"""The GPU worker: a separate process per GPU that owns one resident SDXL and runs queued jobs.

The bot and the CLI never touch the GPU: they submit rows through `storage.jobs` and read
the events back. Start workers with `engine.gpu.worker.supervisor.WorkerSupervisor` (the bot)
or `python -m engine.gpu.worker [--gpu N]` / `pawtrait worker` (one, in the foreground).
"""
