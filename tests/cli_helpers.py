"""Running `pawtrait COMMAND ...` in the test process: the real command line (argument parsing,
settings from the environment and `.env`, the command's own code and output), without paying a
new interpreter's start (importing torch and diffusers) for every call."""

from __future__ import annotations

import io
import os
from contextlib import chdir, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from cli.main import main


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


def pawtrait(*argv: str, env: dict[str, str], cwd: Path) -> Completed:
    """`pawtrait ARGV...` with exactly `env` as its environment, from `cwd`.

    Call it from a thread (asyncio.to_thread) in async tests: commands run their own event loop."""
    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    try:
        with chdir(cwd), redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Completed(code, out.getvalue(), err.getvalue())
