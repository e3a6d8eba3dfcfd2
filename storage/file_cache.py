"""This host's copies of a bucket's objects: a folder bounded in bytes, least recently used out first.

A copy lives at root/<key>. Keys carry random tags and objects are never rewritten, so a copy
is never stale; it only outlives its object when the object is deleted, possibly by another
host (S3Files.drop_deleted_copies finds those).
A copy's modification time is when it was last used (`touch` on every use), so every process
of the host that shares the folder (a bot and its workers) sees one order, with no index to
keep in step. A copy being read when it is evicted stays readable through its open handle;
one just handed out is the most recently used, so only a limit smaller than what one job
needs at once can take it away.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Names given to downloads in progress (storage.files.s3), never counted or evicted here.
_PARTIAL = re.compile(r"^\..+\.download$")


@dataclass(frozen=True)
class Copy:
    key: str
    path: Path
    size: int
    used: float  # epoch seconds


class FileCache:
    def __init__(self, root: Path, limit_bytes: int) -> None:
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    def path(self, key: str) -> Path:
        return self.root / key

    def touch(self, path: Path) -> None:
        """Mark a copy as used now (it moves to the back of the eviction order)."""
        try:
            os.utime(path)
        except FileNotFoundError:
            pass  # evicted or dropped by another process in between; the caller downloads again

    def copies(self) -> list[Copy]:
        """Every complete copy, least recently used first."""
        found = []
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                if _PARTIAL.match(name):
                    continue
                path = Path(directory, name)
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                found.append(Copy(path.relative_to(self.root).as_posix(), path, stat.st_size, stat.st_mtime))
        return sorted(found, key=lambda copy: copy.used)

    def used_bytes(self) -> int:
        return sum(copy.size for copy in self.copies())

    def trim(self, keep: Path | None = None) -> list[str]:
        """Evict least recently used copies until the cache fits its limit; returns their keys.

        `keep` (the copy just fetched) stays even if it alone is over the limit: its caller needs it.
        It walks the folder each time (0.18 s for 10,000 copies on the 2-core machine, in a thread,
        after a download that took longer), which keeps every process of the host exact.
        """
        copies = self.copies()
        excess = sum(copy.size for copy in copies) - self.limit_bytes
        evicted = []
        for copy in copies:
            if excess <= 0:
                break
            if keep is not None and copy.path == keep:
                continue
            copy.path.unlink(missing_ok=True)
            excess -= copy.size
            evicted.append(copy.key)
        return evicted

    def drop(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)
