"""The data folder's layout and safe writes into it.

Everything on disk lives under one folder that the database indexes. Paths are built
from database ids and slugs only, never from text a user typed, and stored relative to
the data folder. Files are written atomically (temp file, fsync, rename) so a crash never
leaves a half-written image or LoRA behind a row that points at it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def slugify(text: str, fallback: str = "x") -> str:
    """A lowercase ASCII slug safe as one path component ('Maine Coon' -> 'maine-coon')."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:48].strip("-")
    return slug or fallback


class DataDir:
    """Where each kind of file lives, relative to the data folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def abs(self, relative: str | Path) -> Path:
        return self.root / relative

    def rel(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def pet_dir(self, pet_id: int) -> Path:
        return self.root / "pets" / str(pet_id)

    def photos_dir(self, pet_id: int) -> Path:
        return self.pet_dir(pet_id) / "photos"

    def run_dir(self, run_id: int) -> Path:
        return self.root / "runs" / str(run_id)

    def checkpoint_dir(self, run_id: int, step: int) -> Path:
        return self.run_dir(run_id) / "checkpoints" / f"step-{step}"

    def validation_dir(self, run_id: int) -> Path:
        return self.run_dir(run_id) / "validation"

    def generations_dir(self) -> Path:
        return self.root / "generations"

    def generation_dir(self, generation_id: int) -> Path:
        return self.generations_dir() / str(generation_id)

    def class_images_dir(self, class_noun: str) -> Path:
        return self.root / "class-images" / slugify(class_noun)

    def compile_cache_dir(self) -> Path:
        """torch.compile's cache of compiled code (not indexed: safe to delete, rebuilt on use)."""
        return self.root / "compile-cache"

    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed over it.

    Use it with writers that want a file name (PIL's `save`, `safetensors.save_file`).
    On an exception the temporary file is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
