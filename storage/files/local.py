"""Files as plain files under one folder, written atomically (temp file, fsync, rename), so a
crash never leaves a half-written image or LoRA behind a row that points at it."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from storage.files.store import (
    PROBE_PREFIX,
    FileMissing,
    FileStore,
    FileStoreError,
    StoredObject,
    check_key,
    check_prefix,
)

# Names our own writers give their temporary files (atomic_path, downloads into the cache).
_TEMP_NAME = re.compile(r"^\..+\.(tmp|download)$")


class DataDir:
    """This host's own folder: the whole installation on one host (LocalFiles keeps the files
    here), or only a cache, temporary files and compiled code when the files live in a bucket."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def tree_files(folder: Path) -> list[str]:
    """Every regular file under `folder`, as sorted '/'-separated relative paths."""
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder to store at {folder}")
    found = []
    for directory, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(directory, name)
            if path.is_file():
                found.append(path.relative_to(folder).as_posix())
    return sorted(found)


def _fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (so a rename of the folder publishes durable content)."""
    for directory, _dirs, names in os.walk(folder):
        for name in names:
            _fsync_file(Path(directory, name))
        _fsync_dir(Path(directory))


def _raise_unless_missing(_function, _path, exc_info) -> None:
    if not issubclass(exc_info[0], FileNotFoundError):
        raise exc_info[1]


class LocalFiles(FileStore):
    """Files as plain files under one folder (one host, or a filesystem all hosts mount).

    Writes are atomic: a temporary file in the same folder, fsync, rename (as atomic_path).
    """

    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """Where `key` lives (whether or not it exists)."""
        return self.root / check_key(key)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(atomic_write_bytes, self.path(key), data)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        await asyncio.to_thread(self._put_file, self.path(key), Path(path), move)

    @staticmethod
    def _put_file(target: Path, source: Path, move: bool) -> None:
        if not source.is_file():
            raise FileNotFoundError(f"No file to store at {source}")
        if _same_file(source, target):  # written in place already: only make it durable
            _fsync_file(target)
            return
        if move:
            _fsync_file(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
            else:
                _fsync_dir(target.parent)
                return
        # A copy (or a move across filesystems): copy beside the target, fsync, rename.
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        if move:
            source.unlink(missing_ok=True)

    async def put_tree(self, prefix: str, folder: Path, *, move: bool = False) -> list[str]:
        prefix = check_prefix(prefix, allow_empty=False)
        return await asyncio.to_thread(self._put_tree, prefix, Path(folder), move)

    def _put_tree(self, prefix: str, folder: Path, move: bool) -> list[str]:
        relatives = tree_files(folder)
        keys = [check_key(f"{prefix}/{relative}") for relative in relatives]
        target = self.root / prefix
        if not move:
            for relative in relatives:
                self._put_file(target / relative, folder / relative, False)
            return keys
        _fsync_tree(folder)
        if _same_file(folder, target):
            return keys
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_tree(target)  # an older copy of the same tree (a checkpoint written again on resume)
        try:
            os.replace(folder, target)  # the fast path: one rename, no copy
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            try:
                shutil.copytree(folder, partial)
                _fsync_tree(partial)
                remove_tree(target)
                os.replace(partial, target)
            finally:
                remove_tree(partial)
            remove_tree(folder)
        _fsync_dir(target.parent)
        return keys

    async def get_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileMissing(key, self.describe()) from None

    async def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileMissing(key, self.describe())
        return path

    async def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    async def delete(self, keys: Iterable[str]) -> None:
        paths = [self.path(key) for key in keys]

        def unlink_all() -> None:
            for path in paths:
                try:
                    path.unlink()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    pass

        await asyncio.to_thread(unlink_all)

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.root / check_prefix(prefix, allow_empty=False)

        def remove() -> int:
            if not folder.is_dir():
                return 0
            count = len(self._walk(folder, ""))
            shutil.rmtree(folder, onerror=_raise_unless_missing)
            return count

        return await asyncio.to_thread(remove)

    async def list(self, prefix: str) -> list[StoredObject]:
        prefix = check_prefix(prefix, allow_empty=True)
        folder = self.root / prefix if prefix else self.root
        return await asyncio.to_thread(self._walk, folder, prefix)

    @staticmethod
    def _walk(folder: Path, prefix: str) -> list[StoredObject]:
        found = []
        if not folder.is_dir():
            return found
        for directory, dirs, names in os.walk(folder):
            dirs[:] = [name for name in dirs if not _TEMP_NAME.match(name)]
            for name in names:
                if _TEMP_NAME.match(name):
                    continue
                path = Path(directory, name)
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked
                relative = path.relative_to(folder).as_posix()
                key = f"{prefix}/{relative}" if prefix else relative
                found.append(StoredObject(key, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda item: item.key)

    def describe(self) -> str:
        return f"folder {self.root}"

    def cached(self, key: str) -> Path | None:
        path = self.path(key)
        return path if path.is_file() else None

    def _probe_error(self, exc: Exception) -> FileStoreError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return FileStoreError(
            f"Pawtrait cannot write its files in the folder {self.root}: {reason}. Check that the folder "
            "is on a mounted disk with free space and that this user may create files there."
        )

    def _probe_cleanup(self) -> None:
        try:
            (self.root / PROBE_PREFIX).rmdir()
        except OSError:
            pass
