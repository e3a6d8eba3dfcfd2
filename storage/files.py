"""The file store (the data folder, or an S3 bucket shared by many hosts) and safe local writes.

Files are named by keys (storage.keys): relative paths built from database ids and random
tags, never from text a user typed, which the database stores. `LocalFiles` keeps them as
plain files under the data folder (one host), written atomically (temp file, fsync, rename)
so a crash never leaves a half-written image or LoRA behind a row that points at it.
`S3Files` keeps them in an S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Backblaze B2
...) with a local cache of downloaded copies. `open_files(PAWTRAIT_FILES_URL, data_dir, env)`
picks one.

The client is obstore: one async API (the bot's and the worker's event loops never block
on a transfer), multipart uploads and retries with backoff built in, one Rust wheel that
pins no botocore (aiobotocore/s3fs pin it tightly, clashing with boto3 users).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import shutil
import socket
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from storage import keys
from storage.file_cache import FileCache


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


# ---------------------------------------------------------------------------------------------
# The file store: one async API over a local folder or an S3-compatible bucket
# ---------------------------------------------------------------------------------------------

PROBE_PREFIX = ".pawtrait-probe"
# Names our own writers give their temporary files (atomic_path, downloads into the cache).
_TEMP_NAME = re.compile(r"^\..+\.(tmp|download)$")


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


def _check_prefix(prefix: str, *, allow_empty: bool) -> str:
    """'runs/1/' or 'runs/1' -> 'runs/1' (a folder of keys); '' (everything) only where allowed."""
    stripped = prefix.rstrip("/") if isinstance(prefix, str) else prefix
    if stripped == "":
        if allow_empty:
            return ""
        raise ValueError("An empty prefix would mean every file: name a folder such as 'runs/1'")
    return check_key(stripped)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _tree_files(folder: Path) -> list[str]:
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
        prefix = _check_prefix(prefix, allow_empty=False)
        return await asyncio.to_thread(self._put_tree, prefix, Path(folder), move)

    def _put_tree(self, prefix: str, folder: Path, move: bool) -> list[str]:
        relatives = _tree_files(folder)
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
        folder = self.root / _check_prefix(prefix, allow_empty=False)

        def remove() -> int:
            if not folder.is_dir():
                return 0
            count = len(self._walk(folder, ""))
            shutil.rmtree(folder, onerror=_raise_unless_missing)
            return count

        return await asyncio.to_thread(remove)

    async def list(self, prefix: str) -> list[StoredObject]:
        prefix = _check_prefix(prefix, allow_empty=True)
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


# S3 --------------------------------------------------------------------------------------------

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


def _safe_url(url: str) -> str:
    """`url` without user:password@, query or fragment (so it can be shown)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


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
        self.prefix = _check_prefix(prefix or "", allow_empty=True)
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
            raise FileStoreError(f"Cannot set up {self.describe()}: {self._scrub(str(exc))}") from None

    # -- errors in plain words ----------------------------------------------------------------

    def _scrub(self, text: str) -> str:
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
        from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

        text = self._scrub(str(exc))
        found = re.search(r"<Code>([^<]+)</Code>", text)
        code = found.group(1) if found else ""
        where = self.describe()
        if code == "NoSuchBucket":
            return FileStoreError(
                f"The bucket '{self.bucket}' does not exist ({where}). Create it, or correct the bucket "
                "name in PAWTRAIT_FILES_URL."
            )
        if isinstance(exc, (FileNotFoundError, NotFoundError)):
            if key is not None:
                return FileMissing(key, where)
            return FileStoreError(f"{where}: could not {action}: not found ({code or 'HTTP 404'}).")
        if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"):
            return FileStoreError(
                f"The bucket '{self.bucket}' is in another region than the one used ({self.region or 'us-east-1'}): "
                "set AWS_REGION to the bucket's region."
            )
        denied = {
            "InvalidAccessKeyId": "the server does not know the access key in AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY does not match AWS_ACCESS_KEY_ID",
            "ExpiredToken": "the temporary credentials (AWS_SESSION_TOKEN) have expired",
            "InvalidToken": "AWS_SESSION_TOKEN is not valid",
            "AccessDenied": f"the key is not allowed to {action}",
            "AllAccessDisabled": "all access to this bucket has been disabled",
            "AccountProblem": "the account has a problem (billing or suspension)",
        }
        if (
            isinstance(exc, (PermissionDeniedError, UnauthenticatedError, PermissionError))
            or code in denied
            or re.search(r"\b(401|403) (Unauthorized|Forbidden)\b", text)
        ):
            reason = denied.get(code, code or "access denied")
            return FileStoreError(
                f"Access to the bucket '{self.bucket}' was denied ({where}): {reason}. Check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if used), and that this key may read, write, list "
                "and delete objects in that bucket."
            )
        lowered = text.lower()
        if "/latest/api/token" in text or "169.254.169.254" in text or "credential" in lowered:
            return FileStoreError(
                f"No AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an "
                "instance role provides them)."
            )
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
            marker in lowered for marker in ("error sending request", "tcp connect error", "dns error", "timed out")
        ):
            if "dns error" in lowered or "lookup address" in lowered:
                reason = "the host name could not be resolved"
            elif "connection refused" in lowered or "connectionrefused" in lowered:
                reason = "the connection was refused: nothing listens at that address and port"
            elif "timed out" in lowered or "timeout" in lowered:
                reason = "the connection timed out"
            elif any(marker in lowered for marker in ("invalidcontenttype", "tls", "certificate", "ssl")):
                reason = "the TLS connection failed (is the endpoint plain http://, or its certificate untrusted?)"
            else:
                reason = "the connection failed"
            target = f"the endpoint {_safe_url(self.endpoint)}" if self.endpoint else "AWS S3"
            return FileStoreError(
                f"Could not reach {target} to {action} in the bucket '{self.bucket}': {reason}. Check "
                "AWS_ENDPOINT_URL (http:// or https://, host and port), that the server is running, and that "
                "this machine can reach it."
            )
        first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return FileStoreError(f"{where}: could not {action}: {code or first_line}")

    def _probe_error(self, exc: Exception) -> FileStoreError:
        return FileStoreError(f"Pawtrait cannot use {self.describe()} for its files: {self._scrub(str(exc))}")

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
        prefix = _check_prefix(prefix, allow_empty=False)
        folder = Path(folder)
        relatives = await asyncio.to_thread(_tree_files, folder)
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
        prefix = _check_prefix(prefix, allow_empty=False)
        objects = await self.list(prefix)
        await self.delete([item.key for item in objects])
        await asyncio.to_thread(remove_tree, self.cache_root / prefix)
        return len(objects)

    async def list(self, prefix: str) -> list[StoredObject]:
        import obstore

        prefix = _check_prefix(prefix, allow_empty=True)
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
            return f"{url} at {_safe_url(self.endpoint)}"
        return f"{url} on AWS S3" + (f" ({self.region})" if self.region else "")

    def cached(self, key: str) -> Path | None:
        path = self.cache_root / check_key(key)
        if not path.is_file():
            return None
        self.cache.touch(path)
        return path


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
        f"PAWTRAIT_FILES_URL '{_safe_url(url)}' is not understood: leave it empty (files in the data folder) "
        "or give s3://bucket/prefix."
    )
