"""`pawtrait worker`, `pawtrait jobs`, `pawtrait wait JOB`, `pawtrait cancel JOB`: the job queue from a shell."""

from __future__ import annotations

import argparse
import asyncio
import sys

from cli.commands import on_own_loop
from config.settings import Settings
from engine.usecases.jobs.contract import Event
from engine.usecases.jobs.events import Progress, Queued, Started
from engine.usecases.jobs.generate import GENERATE
from engine.usecases.jobs.train import TRAIN, Checkpoint, Validation

WAIT_POLL_S = 1.0


def register(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser(
        "worker",
        help="run a GPU worker in the foreground (it runs queued trainings and generations)",
        description="Run one worker: it loads the base model once and runs queued jobs one at a time until "
        "Ctrl-C (a running job goes back to the queue; a training resumes from its latest checkpoint).",
    )
    worker.add_argument("--gpu", type=int, metavar="N", help="CUDA device index (default: the first)")
    worker.set_defaults(run=on_own_loop(_worker))

    listing = subparsers.add_parser("jobs", help="list queued and running jobs with progress, queue position and ETA")
    listing.add_argument("--all", action="store_true", help="also show ended jobs (newest first)")
    listing.add_argument("--limit", type=int, default=30, help="show at most this many rows (default 30)")
    listing.set_defaults(run=on_own_loop(_jobs))

    wait = subparsers.add_parser(
        "wait", help="wait for a job to end and print where its files are (exit 0 only if it succeeded)"
    )
    wait.add_argument("job", type=int, metavar="JOB", help="job id, as printed by --detach or `pawtrait jobs`")
    wait.add_argument("--quiet", action="store_true", help="print only the outcome, not progress")
    wait.set_defaults(run=on_own_loop(_wait))

    cancel = subparsers.add_parser(
        "cancel", help="cancel a job: a queued one at once, a running training at its next step (checkpoints kept)"
    )
    cancel.add_argument("job", type=int, metavar="JOB")
    cancel.set_defaults(run=on_own_loop(_cancel))


async def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from engine.gpu.worker.process import run_worker

    return await run_worker(settings, args.gpu)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


async def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    from storage import jobs
    from storage.connect import open_storage

    async with open_storage(settings) as storage:
        db = storage.db
        rows = (await jobs.list_jobs(db, active_only=not args.all))[: args.limit]
        if not rows:
            print("no jobs" if args.all else "no queued or running jobs (see --all for ended ones)")
            return 0
        print(f"{'JOB':>5}  {'KIND':<12} {'STATUS':<10} {'USER':<12} {'POS':>4} {'DONE':>5} {'ETA':>7}  DETAILS")
        for job in rows:
            position = await jobs.queue_position(db, job.id)
            eta = await jobs.estimate_wait_s(db, job.id)
            details = job.error if job.status == "failed" else (job.progress_text or "")
            pos = "-" if position is None else ("run" if position == 0 else str(position))
            print(
                f"{job.id:>5}  {job.kind:<12} {job.status:<10} {job.user_id[:12]:<12} {pos:>4} "
                f"{job.progress * 100:>4.0f}% {_duration(eta):>7}  {details}"
            )
        return 0


async def _wait(args: argparse.Namespace, settings: Settings) -> int:
    from engine.usecases.jobs.registry import job_kind
    from storage import jobs
    from storage.connect import open_storage

    async with open_storage(settings) as (db, store):
        job = await jobs.get_job(db, args.job)
        if job is None:
            print(f"pawtrait wait: there is no job #{args.job}; see `pawtrait jobs --all`", file=sys.stderr)
            return 1
        last = jobs.START
        while True:
            for event in await jobs.events_after(db, last, [job.id]):
                last = event.position
                if not args.quiet:
                    _print_event(job_kind(job.kind).event_of(event))
            job = await jobs.get_job(db, args.job)
            assert job is not None
            if job.ended:
                break
            await asyncio.sleep(WAIT_POLL_S)
        return await _print_outcome(db, store, job)


def _print_event(event: Event) -> None:
    if isinstance(event, Queued):
        print(f"queued, position {event.position}" + (f" ({event.requeued})" if event.requeued else ""))
    elif isinstance(event, Started):
        print(f"started (attempt {event.attempt})")
    elif isinstance(event, Progress):
        loss = f", loss {event.loss:.4f}" if event.loss is not None else ""
        eta = f", ETA {_duration(event.eta_s)}" if event.eta_s is not None else ""
        print(f"step {event.step}/{event.total}{loss}{eta}")
    elif isinstance(event, Checkpoint):
        print(f"checkpoint at step {event.step}")
    elif isinstance(event, Validation):
        print(f"validation images at step {event.step}: {len(event.images)}")


async def _print_outcome(db, store, job) -> int:
    if job.status == "failed":
        print(f"job #{job.id} failed: {job.error}", file=sys.stderr)
        return 1
    if job.status == "cancelled":
        print(f"job #{job.id} was cancelled")
        return 1
    print(f"job #{job.id} succeeded")
    if job.kind == GENERATE.name and (result := GENERATE.result_of(job)) is not None:
        for key in result.files:
            print(await store.local_path(key))
    if job.kind == TRAIN.name and job.run_id is not None:
        from storage.runs import list_checkpoints

        for checkpoint in await list_checkpoints(db, job.run_id):
            print(f"checkpoint step {checkpoint.step}: {await store.local_path(checkpoint.diffusers_key)}")
    return 0


def print_detached(job, position: int | None) -> int:
    """`--detach` of `pawtrait train` / `pawtrait imagine`: the queued job's id, alone on stdout
    (JOB=$(pawtrait imagine ... --detach)); how to follow it goes to stderr."""
    print(job.id)
    print(
        f"queued as job #{job.id} (position {position}); a worker runs it (`pawtrait worker`, or the bot's). "
        f"Follow it with `pawtrait wait {job.id}`, stop it with `pawtrait cancel {job.id}`.",
        file=sys.stderr,
    )
    return 0


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    from storage import jobs
    from storage.connect import open_storage

    async with open_storage(settings) as storage:
        try:
            job = await jobs.request_cancel(storage.db, args.job)
        except jobs.JobNotFound as error:
            print(f"pawtrait cancel: {error}", file=sys.stderr)
            return 1
        if job.status == "cancelled":
            print(f"job #{job.id} cancelled")
        elif job.status == "running":
            print(f"job #{job.id} will stop at its next step (a training keeps its checkpoints)")
        else:
            print(f"job #{job.id} had already ended ({job.status})")
        return 0
