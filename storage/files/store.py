"""What every file store offers: keys, stored objects, plain-words errors and the `FileStore` interface.

Files are named by keys (storage.keys): relative paths built from database ids and random
tags, never from text a user typed, which the database stores.
"""

from __future__ import annotations

import os
import secrets
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storage import keys

PROBE_PREFIX = ".pawtrait-probe"


@dataclass(frozen=True)
class StoredObject:
    """One stored file: its key, its size in bytes and when it was written (epoch seconds)."""

    key: str
    size: int
    modified: float


class FileMissing(FileNotFoundError):
    """No object under that key; the message names the key."""

    def __init__(self, key: str, where: str = "") -> None:
        self.key = key
        super().__init__(f"No file '{key}' in {where}" if where else f"No file '{key}'")


class FileStoreError(RuntimeError):
    """The file store cannot be used: bucket missing, access denied, endpoint unreachable, disk full ...

    The message says in plain words what failed and what to check, and never holds a secret.
    """


def check_key(key: str) -> str:
    """`key` if it is a clean relative '/'-separated path ('pets/3/photos/a.png'), else ValueError."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"Invalid file key {key!r}: keys are relative paths such as 'pets/3/photos/a.png'")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"Invalid file key {key!r}: no empty, '.' or '..' parts allowed")
    return key


def check_prefix(prefix: str, *, allow_empty: bool) -> str:
    """'runs/1/' or 'runs/1' -> 'runs/1' (a folder of keys); '' (everything) only where allowed."""
    stripped = prefix.rstrip("/") if isinstance(prefix, str) else prefix
    if stripped == "":
        if allow_empty:
            return ""
        raise ValueError("An empty prefix would mean every file: name a folder such as 'runs/1'")
    return check_key(stripped)


class FileStore(ABC):
    """Pawtrait's files. Keys are '/'-separated relative paths such as 'pets/3/photos/ab12-crop.png'
    (the same relative paths the database already stores). Objects are written once and never
    rewritten with other content (writers choose fresh keys), so a cached copy never goes stale."""

    is_local: bool  # True: keys are plain files under `root` (no copies needed)

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key` (atomically: readers see the old object, none, or all of it)."""

    @abstractmethod
    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        """Store the file at `path` under `key`. move=True: the caller's file may be consumed."""

    @abstractmethod
    async def put_tree(self, prefix: str, folder: Path, *, move: bool = False) -> list[str]:
        """Store every file under `folder` as prefix/<relative path>; returns the keys, sorted.

        With move=True the folder is consumed (LocalFiles renames it into place, replacing an older
        tree at `prefix` whole, as checkpoints always did).
        """

    @abstractmethod
    async def get_bytes(self, key: str) -> bytes:
        """The object's content; FileMissing if there is none."""

    @abstractmethod
    async def local_path(self, key: str) -> Path:
        """A local file with the object's content, for code that needs a path (torch, safetensors, PIL).

        Never a partial file: S3 downloads go to a temporary file renamed into place. FileMissing if absent.
        """

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @abstractmethod
    async def delete(self, keys: Iterable[str]) -> None:
        """Delete these objects (and any cached copies); keys with no object are ignored."""

    @abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Delete everything under 'prefix/' (not 'prefix10/...'); returns how many objects."""

    @abstractmethod
    async def list(self, prefix: str) -> list[StoredObject]:
        """Everything under 'prefix/' (recursively; '' lists all), sorted by key."""

    @abstractmethod
    def describe(self) -> str:
        """Where the files are, in words ('folder /srv/data', 's3://bucket/prefix at https://host'); no secrets."""

    @abstractmethod
    def cached(self, key: str) -> Path | None:
        """A local copy of the object if one is already on this host (no request), else None."""

    async def drop_deleted_copies(self) -> list[str]:
        """Remove this host's copies of objects deleted since (by any host); returns their keys.

        Only stores that keep copies (S3Files) have any: LocalFiles' files are the objects themselves.
        """
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    async def probe(self) -> None:
        """Write, read back, list and delete a small object; FileStoreError in plain words if any step fails."""
        host = keys.slugify(socket.gethostname(), fallback="host")
        key = f"{PROBE_PREFIX}/{host}-{os.getpid()}-{secrets.token_hex(4)}"
        data = b"pawtrait probe " + secrets.token_hex(16).encode()
        try:
            written = False
            try:
                await self.put_bytes(key, data)
                written = True
                if await self.get_bytes(key) != data:
                    raise FileStoreError(f"{self.describe()} gave back other bytes than were written to '{key}'.")
                if key not in [item.key for item in await self.list(PROBE_PREFIX)]:
                    raise FileStoreError(f"{self.describe()} does not list '{key}', which was just written.")
            except BaseException:
                if written:
                    try:
                        await self.delete([key])
                    except Exception:  # noqa: BLE001 - the first failure is the one to report
                        pass
                raise
            await self.delete([key])
            if await self.exists(key):
                raise FileStoreError(f"{self.describe()} still has '{key}' after deleting it.")
        except FileStoreError:
            raise
        except Exception as exc:
            raise self._probe_error(exc) from exc
        finally:
            self._probe_cleanup()

    def _probe_error(self, exc: Exception) -> FileStoreError:
        return FileStoreError(f"Pawtrait cannot use {self.describe()} for its files: {exc}")

    def _probe_cleanup(self) -> None:  # noqa: B027 - optional: only stores that leave something behind override it
        pass
