"""The file store (the data folder, or an S3 bucket shared by many hosts) and safe local writes.

`store` is the interface every caller codes against; `local` keeps files under the data folder
(one host), `s3` in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Backblaze B2 ...),
whose errors `s3_errors` explains. `open_files(PAWTRAIT_FILES_URL, data_dir, env)` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from storage.files.local import DataDir, LocalFiles, atomic_path, atomic_write_bytes, remove_tree
from storage.files.s3 import DEFAULT_CACHE_BYTES, S3Files
from storage.files.s3_errors import safe_url
from storage.files.store import PROBE_PREFIX, FileMissing, FileStore, FileStoreError, StoredObject, check_key

__all__ = [
    "DEFAULT_CACHE_BYTES", "PROBE_PREFIX", "DataDir", "FileMissing", "FileStore", "FileStoreError", "LocalFiles",
    "S3Files", "StoredObject", "atomic_path", "atomic_write_bytes", "check_key", "open_files", "remove_tree",
]


def open_files(
    files_url: str | None, data_dir: Path, env: Mapping[str, str], cache_bytes: int = DEFAULT_CACHE_BYTES
) -> FileStore:
    """The file store PAWTRAIT_FILES_URL names.

    None or '' -> LocalFiles(data_dir) (one host); 's3://bucket/prefix' -> S3Files, shared by
    many hosts (downloads cached under data_dir/'cache', at most `cache_bytes` of them).
    """
    url = (files_url or "").strip()
    if not url:
        return LocalFiles(Path(data_dir))
    parts = urlsplit(url)
    if parts.scheme.lower() == "s3":
        if "@" in parts.netloc:
            raise ValueError(
                "PAWTRAIT_FILES_URL must not hold credentials: put them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
            )
        if not parts.netloc:
            raise ValueError(f"PAWTRAIT_FILES_URL '{url}' names no bucket: write s3://bucket or s3://bucket/prefix.")
        return S3Files(parts.netloc, parts.path.strip("/"), Path(data_dir) / "cache", env, cache_bytes=cache_bytes)
    raise ValueError(
        f"PAWTRAIT_FILES_URL '{safe_url(url)}' is not understood: leave it empty (files in the data folder) "
        "or give s3://bucket/prefix."
    )
