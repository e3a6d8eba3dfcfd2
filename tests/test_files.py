"""The file store (storage/files/) against a local folder and a real S3 server (moto), and the
PostgreSQL test server itself (tests/services.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from storage.files import (
    FileMissing,
    FileStore,
    FileStoreError,
    LocalFiles,
    S3Files,
    StoredObject,
    open_files,
)

from services import S3Server, free_port


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FileStore:
    """A LocalFiles on a temporary folder, or an S3Files on a fresh bucket of the moto server."""
    if request.param == "local":
        return open_files(None, tmp_path / "data", {})
    s3: S3Server = request.getfixturevalue("s3_server")
    env = s3.env(s3.create_bucket(), prefix="pawtrait")
    return open_files(env["PAWTRAIT_FILES_URL"], tmp_path / "data", env)


def other_s3(store: S3Files, tmp_path: Path, env_override: dict | None = None) -> S3Files:
    """A second S3Files on the same bucket with its own cache (another host, say)."""
    return S3Files(store.bucket, store.prefix, tmp_path / "other-cache", {**store._env, **(env_override or {})})


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def test_put_and_get_bytes(store: FileStore) -> None:
    await store.put_bytes("pets/3/photos/ab12-crop.png", b"\x89PNG fake")
    assert await store.get_bytes("pets/3/photos/ab12-crop.png") == b"\x89PNG fake"
    assert await store.exists("pets/3/photos/ab12-crop.png")
    assert not await store.exists("pets/3/photos/nope.png")
    assert not await store.exists("pets/3")  # a folder of keys is not an object
    with pytest.raises(FileMissing, match="pets/3/photos/nope.png") as missing:
        await store.get_bytes("pets/3/photos/nope.png")
    assert isinstance(missing.value, FileNotFoundError)
    assert missing.value.key == "pets/3/photos/nope.png"
    with pytest.raises(FileMissing, match="nope.png"):
        await store.local_path("pets/3/photos/nope.png")


@pytest.mark.parametrize("key", ["../escape", "/absolute", "a//b", "a/./b", "", "a\\b"])
async def test_keys_must_be_clean_relative_paths(store: FileStore, key: str) -> None:
    with pytest.raises(ValueError):
        await store.put_bytes(key, b"x")
    with pytest.raises(ValueError):
        await store.get_bytes(key)


async def test_put_file_copies_or_moves(store: FileStore, tmp_path: Path) -> None:
    source = write(tmp_path / "work" / "image.png", b"copied")
    await store.put_file("generations/7/1.png", source)
    assert source.read_bytes() == b"copied"  # a copy leaves the caller's file alone
    assert await store.get_bytes("generations/7/1.png") == b"copied"

    moved = write(tmp_path / "work" / "moved.png", b"moved")
    inode = moved.stat().st_ino
    await store.put_file("generations/7/2.png", moved, move=True)
    assert not moved.exists()
    assert await store.get_bytes("generations/7/2.png") == b"moved"
    if isinstance(store, LocalFiles):  # renamed into place, not copied
        assert store.path("generations/7/2.png").stat().st_ino == inode
        assert not list(store.path("generations/7/2.png").parent.glob(".*.tmp"))

    with pytest.raises(FileNotFoundError):
        await store.put_file("generations/7/3.png", tmp_path / "work" / "absent.png")


async def test_put_tree_move_and_copy(store: FileStore, tmp_path: Path) -> None:
    folder = tmp_path / "work" / "step-500.partial"
    write(folder / "pytorch_lora_weights.safetensors", b"diffusers" * 100)
    write(folder / "rex.safetensors", b"kohya" * 50)
    write(folder / "state" / "optimizer.pt", b"state")
    inode = folder.stat().st_ino

    keys = await store.put_tree("runs/4/checkpoints/step-500", folder, move=True)
    assert keys == [
        "runs/4/checkpoints/step-500/pytorch_lora_weights.safetensors",
        "runs/4/checkpoints/step-500/rex.safetensors",
        "runs/4/checkpoints/step-500/state/optimizer.pt",
    ]
    assert not folder.exists()
    assert await store.get_bytes(keys[2]) == b"state"
    assert [item.key for item in await store.list("runs/4/checkpoints/step-500")] == keys
    if isinstance(store, LocalFiles):  # the whole folder was renamed into place: same inode, no copy
        assert store.path("runs/4/checkpoints/step-500").stat().st_ino == inode

    # Written again (a resumed run): the new tree replaces the old one.
    write(folder / "rex.safetensors", b"newer")
    await store.put_tree("runs/4/checkpoints/step-500/", folder, move=True)
    assert await store.get_bytes("runs/4/checkpoints/step-500/rex.safetensors") == b"newer"

    kept = write(tmp_path / "work" / "validation" / "1.png", b"val")
    assert await store.put_tree("runs/4/validation", kept.parent) == ["runs/4/validation/1.png"]
    assert kept.read_bytes() == b"val"  # copied, the caller keeps its folder
    assert await store.get_bytes("runs/4/validation/1.png") == b"val"

    with pytest.raises(ValueError):
        await store.put_tree("", kept.parent)


async def test_local_path(store: FileStore, tmp_path: Path) -> None:
    await store.put_bytes("runs/2/lora.safetensors", b"weights")
    assert store.cached("runs/2/lora.safetensors") is None or isinstance(store, LocalFiles)
    path = await store.local_path("runs/2/lora.safetensors")
    assert path.read_bytes() == b"weights"
    assert store.cached("runs/2/lora.safetensors") == path
    if isinstance(store, LocalFiles):
        assert path == store.root / "runs/2/lora.safetensors"  # the file itself, no copy
        return
    assert isinstance(store, S3Files)
    assert path.is_relative_to(tmp_path / "data" / "cache")
    # Deleted behind this host's back (by another host): the second call is served from the cache
    # without a request, which is right because objects are never rewritten.
    await other_s3(store, tmp_path).delete(["runs/2/lora.safetensors"])
    assert not await store.exists("runs/2/lora.safetensors")
    assert await store.local_path("runs/2/lora.safetensors") == path
    assert path.read_bytes() == b"weights"
    # Deleting through this store drops the cached copy too.
    await store.delete(["runs/2/lora.safetensors"])
    assert not path.exists()
    with pytest.raises(FileMissing):
        await store.local_path("runs/2/lora.safetensors")


async def test_local_copies_stay_within_the_cache_limit_least_recently_used_out_first(
    store: FileStore, tmp_path: Path
) -> None:
    keys = [f"pets/1/photos/{name}.jpg" for name in "abcd"]
    for index, key in enumerate(keys):
        await store.put_bytes(key, bytes([index]) * 100_000)
    if isinstance(store, LocalFiles):  # the files are the objects themselves: nothing is a copy
        assert [(await store.local_path(key)).stat().st_size for key in keys] == [100_000] * 4
        return
    assert isinstance(store, S3Files)
    small = S3Files(store.bucket, store.prefix, tmp_path / "small-cache", store._env, cache_bytes=250_000)
    a, b, c, d = keys

    async def use(key: str) -> None:
        await small.local_path(key)
        await asyncio.sleep(0.02)  # distinct use times on filesystems with coarse timestamps

    await use(a)
    await use(b)
    await use(a)  # a is used again: b is now the least recently used
    await use(c)  # 300 KB > 250 KB: b goes
    assert [small.cached(key) is not None for key in keys] == [True, False, True, False]
    await use(d)  # then a, used before c
    assert [small.cached(key) is not None for key in keys] == [False, False, True, True]
    assert small.cache.used_bytes() <= 250_000
    big = "runs/1/checkpoints/step-2-ab/lora.safetensors"
    await store.put_bytes(big, b"w" * 300_000)
    path = await small.local_path(big)  # larger than the whole cache: kept for its caller, all else goes
    assert path.stat().st_size == 300_000 and [p.key for p in small.cache.copies()] == [big]
    assert (await small.local_path(b)).read_bytes() == bytes([1]) * 100_000  # evicted copies download again


async def test_copies_of_objects_deleted_on_another_host_are_dropped(store: FileStore, tmp_path: Path) -> None:
    kept, forgotten = "pets/2/photos/keep.jpg", ["pets/1/photos/a.jpg", "pets/1/sheet/s.png", "tmp/p.png"]
    for key in [kept, *forgotten]:
        await store.put_bytes(key, b"pixels")
        await store.local_path(key)
    if isinstance(store, LocalFiles):
        assert await store.drop_deleted_copies() == []
        return
    assert isinstance(store, S3Files)
    other = other_s3(store, tmp_path)
    await other.delete_prefix("pets/1")  # a /forget on another host
    await other.delete(["tmp/p.png"])
    assert sorted(await store.drop_deleted_copies()) == sorted(forgotten)
    assert [store.cached(key) for key in forgotten] == [None] * 3
    assert store.cached(kept) is not None


async def test_delete_ignores_missing_keys(store: FileStore) -> None:
    await store.put_bytes("generations/1/a.png", b"a")
    await store.put_bytes("generations/1/b.png", b"b")
    await store.local_path("generations/1/a.png")
    await store.delete(["generations/1/a.png", "generations/1/never-there.png", "nowhere/x.png"])
    assert not await store.exists("generations/1/a.png")
    assert store.cached("generations/1/a.png") is None
    assert await store.exists("generations/1/b.png")
    await store.delete([])
    await store.delete(iter(["generations/1/b.png"]))
    assert await store.list("generations") == []


async def test_delete_prefix_spares_siblings(store: FileStore) -> None:
    for key in ["runs/1/a.png", "runs/1/checkpoints/step-5/x.safetensors", "runs/10/a.png", "runs/1x.png"]:
        await store.put_bytes(key, b"1")
    await store.local_path("runs/1/a.png")
    assert await store.delete_prefix("runs/1") == 2
    assert [item.key for item in await store.list("")] == ["runs/10/a.png", "runs/1x.png"]
    assert store.cached("runs/1/a.png") is None
    assert await store.delete_prefix("runs/1/") == 0
    assert await store.delete_prefix("runs/10/") == 1
    with pytest.raises(ValueError):
        await store.delete_prefix("")
    with pytest.raises(ValueError):
        await store.delete_prefix("/")


async def test_list_with_sizes(store: FileStore) -> None:
    before = time.time() - 5
    await store.put_bytes("pets/3/photos/a.png", b"12345")
    await store.put_bytes("pets/3/photos/sub/b.png", b"1")
    await store.put_bytes("pets/3/contact.png", b"123")
    await store.put_bytes("pets/30/photos/c.png", b"1234")
    listed = await store.list("pets/3/photos")
    assert [(item.key, item.size) for item in listed] == [("pets/3/photos/a.png", 5), ("pets/3/photos/sub/b.png", 1)]
    assert all(isinstance(item, StoredObject) and before <= item.modified <= time.time() + 5 for item in listed)
    assert [item.key for item in await store.list("pets/3/")] == [
        "pets/3/contact.png",
        "pets/3/photos/a.png",
        "pets/3/photos/sub/b.png",
    ]
    assert len(await store.list("")) == 4
    assert await store.list("pets/4") == []


async def test_probe_leaves_nothing_behind(store: FileStore) -> None:
    await store.probe()
    assert await store.list("") == []
    if isinstance(store, LocalFiles):
        assert not (store.root / ".pawtrait-probe").exists()


async def test_describe_names_the_place_never_a_secret(store: FileStore, tmp_path: Path) -> None:
    text = store.describe()
    if isinstance(store, LocalFiles):
        assert text == f"folder {tmp_path / 'data'}"
        return
    assert isinstance(store, S3Files)
    assert text == f"s3://{store.bucket}/pawtrait at {store.endpoint}"
    secret = store._env["AWS_SECRET_ACCESS_KEY"]
    assert secret not in text and secret not in repr(store)
    assert store._env["AWS_ACCESS_KEY_ID"] not in text


async def test_large_file_round_trip(store: FileStore, tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)  # above the 5 MiB multipart threshold
    source = write(tmp_path / "work" / "big.safetensors", data)
    await store.put_file("runs/9/big.safetensors", source)
    path = await store.local_path("runs/9/big.safetensors")
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert (await store.list("runs/9"))[0].size == len(data)
    assert await store.get_bytes("runs/9/big.safetensors") == data


async def test_concurrent_local_path_gives_complete_files(store: FileStore) -> None:
    data = os.urandom(6 * 1024 * 1024)
    await store.put_bytes("runs/5/lora.safetensors", data)
    start = threading.Barrier(2)
    results: list[object] = [None, None]

    def fetch(index: int) -> None:
        start.wait()
        try:
            path = asyncio.run(store.local_path("runs/5/lora.safetensors"))
            results[index] = path.read_bytes()
        except Exception as exc:  # noqa: BLE001 - reported below
            results[index] = exc

    threads = [threading.Thread(target=fetch, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == data and results[1] == data
    folder = (await store.local_path("runs/5/lora.safetensors")).parent
    assert sorted(path.name for path in folder.iterdir()) == ["lora.safetensors"]  # no temporary leftovers


# -- errors an operator can meet -----------------------------------------------------------------


async def test_missing_bucket_is_explained(s3_server: S3Server, tmp_path: Path) -> None:
    env = s3_server.env("pawtrait-no-such-bucket")
    files = open_files(env["PAWTRAIT_FILES_URL"], tmp_path, env)
    with pytest.raises(FileStoreError, match="bucket 'pawtrait-no-such-bucket' does not exist") as error:
        await files.probe()
    assert "Create it" in str(error.value)
    with pytest.raises(FileStoreError, match="does not exist"):
        await files.put_bytes("a.png", b"x")
    with pytest.raises(FileStoreError, match="does not exist"):
        await files.list("")
    assert s3_server.secret_key not in str(error.value)


async def test_unreachable_endpoint_is_explained_quickly(s3_server: S3Server, tmp_path: Path) -> None:
    env = {**s3_server.env("pawtrait-bucket"), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    files = open_files(env["PAWTRAIT_FILES_URL"], tmp_path, env)
    started = time.monotonic()
    with pytest.raises(FileStoreError, match="Could not reach the endpoint http://127.0.0.1:.*refused") as error:
        await files.probe()
    assert time.monotonic() - started < 10
    assert "AWS_ENDPOINT_URL" in str(error.value)
    assert s3_server.secret_key not in str(error.value)


def test_access_denied_is_explained(tmp_path: Path) -> None:
    from obstore.exceptions import PermissionDeniedError

    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "very-secret", "AWS_REGION": "eu-west-1"}
    files = S3Files("pawtrait-files", "", tmp_path, env)
    body = "403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><Message>very-secret</Message></Error>"
    error = files._explain(PermissionDeniedError(body), "write 'a.png'", "a.png")
    assert isinstance(error, FileStoreError)
    assert "Access to the bucket 'pawtrait-files' was denied" in str(error)
    assert "AWS_SECRET_ACCESS_KEY does not match" in str(error)
    assert "very-secret" not in str(error)
    assert files.describe() == "s3://pawtrait-files on AWS S3 (eu-west-1)"


async def test_local_probe_failure_names_the_folder(tmp_path: Path) -> None:
    blocker = write(tmp_path / "not-a-folder", b"a file where the data folder should be")
    with pytest.raises(FileStoreError, match=f"folder {blocker}"):
        await LocalFiles(blocker).probe()


def test_open_files_picks_the_store(tmp_path: Path) -> None:
    assert isinstance(open_files(None, tmp_path, {}), LocalFiles)
    assert open_files("", tmp_path, {}).root == tmp_path
    s3 = open_files("s3://bucket-name/some/prefix/", tmp_path, {"AWS_ENDPOINT_URL": "https://minio.example:9000"})
    assert isinstance(s3, S3Files) and not s3.is_local
    assert (s3.bucket, s3.prefix) == ("bucket-name", "some/prefix")
    assert s3.cache_root == tmp_path / "cache" / "bucket-name" / "some/prefix"
    assert s3.describe() == "s3://bucket-name/some/prefix at https://minio.example:9000"
    for other in ("gs://bucket", "/srv/pawtrait"):
        with pytest.raises(ValueError, match="not understood"):
            open_files(other, tmp_path, {})
    with pytest.raises(ValueError, match="must not hold credentials") as error:
        open_files("s3://key:hunter2@bucket", tmp_path, {})
    assert "hunter2" not in str(error.value)


# -- the PostgreSQL test server ------------------------------------------------------------------


async def test_postgres_server_keeps_data_across_restart(postgres_server) -> None:
    import asyncpg

    url = postgres_server.create_database()
    assert url.startswith("postgresql+asyncpg://pawtrait:") and "@127.0.0.1:" in url
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE TABLE pets (id serial PRIMARY KEY, name text NOT NULL)")
        await connection.execute("INSERT INTO pets (name) VALUES ('Rex')")
        assert await connection.fetchval("SHOW fsync") == "on"
        assert await connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await connection.close()

    other = await asyncpg.connect(postgres_server.create_database().replace("+asyncpg", "", 1))
    try:  # each test's database is its own
        assert await other.fetchval("SELECT to_regclass('pets')") is None
    finally:
        await other.close()

    await asyncio.to_thread(postgres_server.restart)
    connection = await asyncpg.connect(dsn)
    try:
        assert await connection.fetchval("SELECT name FROM pets") == "Rex"
    finally:
        await connection.close()
