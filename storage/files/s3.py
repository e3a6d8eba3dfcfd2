"""Files in an S3-compatible bucket shared by many hosts, with a local cache of downloaded copies.

The client is obstore: one async API (the bot's and the worker's event loops never block
on a transfer), multipart uploads and retries with backoff built in, one Rust wheel that
pins no botocore (aiobotocore/s3fs pin it tightly, clashing with boto3 users).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from storage.file_cache import FileCache
from storage.files.local import remove_tree, tree_files
from storage.files.s3_errors import explain, safe_url
from storage.files.store import FileMissing, FileStore, FileStoreError, StoredObject, check_key, check_prefix

# Ordinary requests: retry transient failures (5xx, dropped connections) for up to 3 minutes, as
# object_store does by default. Probes (`pawtrait doctor`) answer within seconds instead.
_PROBE_RETRY = {
    "max_retries": 2,
    "retry_timeout": timedelta(seconds=15),
    "backoff": {"init_backoff": timedelta(milliseconds=200), "max_backoff": timedelta(seconds=2), "base": 2},
}
_DOWNLOAD_CHUNK = 8 * 1024 * 1024
_DELETE_BATCH = 1000  # the most keys one S3 DeleteObjects request takes
DEFAULT_CACHE_BYTES = 20 * 2**30  # PAWTRAIT_CACHE_GIB's default


def _virtual_host_endpoint(endpoint: str, bucket: str) -> str:
    parts = urlsplit(endpoint)
    host = f"{bucket}.{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class S3Files(FileStore):
    """Files in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Backblaze B2 ...), under `prefix`.

    Talks S3 through obstore (Rust's object_store: async, multipart uploads for large files, retries
    with backoff). Credentials, region and endpoint come from the usual AWS variables in `env`:
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION,
    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (R2, MinIO ...; plain http:// is allowed when given),
    and AWS_S3_ADDRESSING_STYLE ('path', the default with an endpoint; 'virtual'). Variables missing
    from `env` may still be read by obstore from the process environment, so pass os.environ
    (or a copy of it with changes) in normal use.

    Downloads for `local_path` are cached under cache_dir/<bucket>/<prefix>/<key>: objects are never
    rewritten, so a cached copy never goes stale; the bucket and prefix keep two stores apart. The
    copies take at most `cache_bytes` (PAWTRAIT_CACHE_GIB), the least recently used evicted first
    (storage.file_cache), and `drop_deleted_copies` (a worker chore) removes copies of objects that
    another host deleted.
    """

    is_local = False
    upload_concurrency = 8

    def __init__(
        self,
        bucket: str,
        prefix: str,
        cache_dir: Path,
        env: Mapping[str, str],
        *,
        retry: dict | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        from obstore.store import S3Store

        if not bucket or "/" in bucket:
            raise ValueError(f"Invalid bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = check_prefix(prefix or "", allow_empty=True)
        self.cache_dir = Path(cache_dir)
        self.cache_root = self.cache_dir / bucket / self.prefix if self.prefix else self.cache_dir / bucket
        self.cache = FileCache(self.cache_root, cache_bytes)
        self._env = dict(env)
        self.endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip().rstrip("/")
        self.region = (env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "").strip()
        style = (env.get("AWS_S3_ADDRESSING_STYLE") or "").strip().lower()
        # Path-style (host/bucket/key) with a custom endpoint, which MinIO and moto need; on AWS
        # itself virtual-hosted style (bucket.s3.region.amazonaws.com), which AWS recommends.
        virtual = style == "virtual" or (not self.endpoint and style != "path")
        config: dict[str, object] = {"virtual_hosted_style_request": virtual}
        if self.region:
            config["region"] = self.region
        if self.endpoint:
            endpoint = _virtual_host_endpoint(self.endpoint, bucket) if virtual else self.endpoint
            config["endpoint"] = endpoint
            config["aws_endpoint_url_s3"] = endpoint  # or else the process's own variable would win
        for variable, option in (
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_SESSION_TOKEN", "session_token"),
        ):
            if env.get(variable):
                config[option] = env[variable]
        self._secrets = [value for value in (env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")) if value]
        client: dict[str, object] = {"connect_timeout": "10s", "timeout": "30min"}
        if self.endpoint.lower().startswith("http://"):
            client["allow_http"] = True
        try:
            self._store = S3Store(
                bucket, prefix=self.prefix or None, config=config, client_options=client, retry_config=retry
            )
        except Exception as exc:  # noqa: BLE001 - obstore's configuration errors have no common base
            raise FileStoreError(f"Cannot set up {self.describe()}: {self.scrub(str(exc))}") from None

    # -- errors in plain words ----------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """`text` without this store's secret key or session token."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @asynccontextmanager
    async def _errors(self, action: str, key: str | None = None) -> AsyncIterator[None]:
        """Turn obstore's errors into FileMissing (key given, object absent) or FileStoreError."""
        from obstore.exceptions import BaseError

        try:
            yield
        except (BaseError, FileNotFoundError, FileExistsError, PermissionError, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, FileMissing):
                raise
            raise self._explain(exc, action, key) from exc

    def _explain(self, exc: BaseException, action: str, key: str | None) -> Exception:
        return explain(self, exc, action, key)

    def _probe_error(self, exc: Exception) -> FileStoreError:
        return FileStoreError(f"Pawtrait cannot use {self.describe()} for its files: {self.scrub(str(exc))}")

    # -- the API --------------------------------------------------------------------------------

    async def put_bytes(self, key: str, data: bytes) -> None:
        import obstore

        check_key(key)
        async with self._errors(f"write '{key}'"):
            await obstore.put_async(self._store, key, data)

    async def put_file(self, key: str, path: Path, *, move: bool = False) -> None:
        import obstore

        check_key(key)
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"No file to store at {source}")
        async with self._errors(f"write '{key}'"):
            await obstore.put_async(self._store, key, source)  # multipart above 5 MiB
        if move:
            source.unlink(missing_ok=True)

    async def put_tree(self, prefix: str, folder: Path, *, move: bool = False) -> list[str]:
        prefix = check_prefix(prefix, allow_empty=False)
        folder = Path(folder)
        relatives = await asyncio.to_thread(tree_files, folder)
        keys = [check_key(f"{prefix}/{relative}") for relative in relatives]
        limit = asyncio.Semaphore(self.upload_concurrency)

        async def upload(relative: str, key: str) -> None:
            async with limit:
                await self.put_file(key, folder / relative)

        async with asyncio.TaskGroup() as group:
            for relative, key in zip(relatives, keys, strict=True):
                group.create_task(upload(relative, key))
        if move:
            await asyncio.to_thread(remove_tree, folder)
        return keys

    async def get_bytes(self, key: str) -> bytes:
        import obstore

        check_key(key)
        async with self._errors(f"read '{key}'", key):
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())

    async def local_path(self, key: str) -> Path:
        import obstore

        target = self.cache_root / check_key(key)
        if target.is_file():
            self.cache.touch(target)
            return target
        action = f"download '{key}'"
        async with self._errors(action, key):
            result = await obstore.get_async(self._store, key)
        size = int(result.meta["size"])
        target.parent.mkdir(parents=True, exist_ok=True)
        # A temporary file beside the target, renamed into place once complete: threads and processes
        # downloading the same key at once each write their own, and nobody sees a partial file.
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".download")
        try:
            with os.fdopen(fd, "wb") as handle:
                stream = result.stream(min_chunk_size=_DOWNLOAD_CHUNK)
                while True:
                    async with self._errors(action, key):
                        chunk = await anext(stream, None)
                    if chunk is None:
                        break
                    handle.write(chunk)
                written = handle.tell()
                handle.flush()
                await asyncio.to_thread(os.fsync, handle.fileno())
            if written != size:
                raise FileStoreError(f"Downloading '{key}' from {self.describe()} stopped at {written}/{size} bytes.")
            os.replace(tmp_name, target)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
        await asyncio.to_thread(self.cache.trim, target)
        return target

    async def exists(self, key: str) -> bool:
        import obstore

        check_key(key)
        try:
            async with self._errors(f"look up '{key}'", key):
                await obstore.head_async(self._store, key)
        except FileMissing:
            return False
        return True

    async def delete(self, keys: Iterable[str]) -> None:
        import obstore

        keys = [check_key(key) for key in keys]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            async with self._errors(f"delete {len(batch)} file(s)"):
                await obstore.delete_async(self._store, batch)
        await asyncio.to_thread(self.cache.drop, keys)

    async def drop_deleted_copies(self) -> list[str]:
        # Checked against the bucket itself, the one place every host's deletions reach: a `/forget`
        # on the bot's host or retention on another worker deletes objects there, and this host's
        # next sweep sees them gone. One listing per pet, run or generation folder that has copies
        # here (a LIST answers for up to 1,000 keys), not one request per copy.
        copies = [copy.key for copy in await asyncio.to_thread(self.cache.copies)]
        folders: dict[str, list[str]] = {}
        for key in copies:
            parts = key.split("/")
            folders.setdefault("/".join(parts[:2]) if len(parts) > 2 else "", []).append(key)
        gone = []
        for folder, cached in folders.items():
            if folder:
                stored = {item.key for item in await self.list(folder)}
                gone += [key for key in cached if key not in stored]
            else:
                gone += [key for key in cached if not await self.exists(key)]
        await asyncio.to_thread(self.cache.drop, gone)
        return gone

    async def delete_prefix(self, prefix: str) -> int:
        prefix = check_prefix(prefix, allow_empty=False)
        objects = await self.list(prefix)
        await self.delete([item.key for item in objects])
        await asyncio.to_thread(remove_tree, self.cache_root / prefix)
        return len(objects)

    async def list(self, prefix: str) -> list[StoredObject]:
        import obstore

        prefix = check_prefix(prefix, allow_empty=True)
        found = []
        async with self._errors(f"list '{prefix}/'" if prefix else "list the files"):
            async for batch in obstore.list(self._store, prefix or None, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    if not prefix or key.startswith(prefix + "/"):
                        found.append(StoredObject(key, int(meta["size"]), meta["last_modified"].timestamp()))
        return sorted(found, key=lambda item: item.key)

    async def probe(self) -> None:
        # A twin with short retries, so an unreachable endpoint is reported in seconds, not minutes.
        quick = S3Files(
            self.bucket, self.prefix, self.cache_dir, self._env, retry=_PROBE_RETRY, cache_bytes=self.cache.limit_bytes
        )
        await FileStore.probe(quick)

    def describe(self) -> str:
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if self.endpoint:
            return f"{url} at {safe_url(self.endpoint)}"
        return f"{url} on AWS S3" + (f" ({self.region})" if self.region else "")

    def cached(self, key: str) -> Path | None:
        path = self.cache_root / check_key(key)
        if not path.is_file():
            return None
        self.cache.touch(path)
        return path
