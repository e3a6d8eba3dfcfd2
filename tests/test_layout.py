"""The layout keeps its promise: the bot, storage, config, the CLI's modules and `engine.usecases` load no GPU stack.

The bot process never needs torch (it would cost it seconds to start and a GB of memory), so a
module that starts importing torch at the top must move to `engine.gpu` instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TORCH_FREE = ["bot", "storage", "config", "cli", "engine/usecases"]
GPU_STACK = ("torch", "diffusers", "transformers", "peft", "bitsandbytes")


def _modules() -> list[str]:
    names = []
    for room in TORCH_FREE:
        for path in sorted((REPO / room).rglob("*.py")):
            relative = path.relative_to(REPO).with_suffix("")
            if "migrations" in relative.parts or relative.name == "__main__":
                continue  # alembic's scripts run inside alembic; __main__ would run the program
            parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
            names.append(".".join(parts))
    return names


def test_torch_free_rooms_load_no_gpu_stack() -> None:
    modules = _modules()
    assert "engine.usecases.queueing" in modules and "bot.app" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(','.join(sorted(m for m in {GPU_STACK!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"loaded by a torch-free module: {result.stdout.strip()}"

