"""Batched, idempotent deletion (and listing) of storage objects; the only place that deletes them.

S3 goes through the django-storages bucket's client: ``DeleteObjects`` with up to 1,000 keys a
call, signed with Content-MD5, and in a versioned bucket every version of each key (bucket.py).
Any other backend (the local file system) deletes key by key. A key that is already gone counts
as deleted; any other error is retried with backoff, and keys still not deleted after the last
attempt are returned so the caller keeps their task for a later run.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.storage import Storage, default_storage
from django.db import connection

from retention.storage import bucket

logger = logging.getLogger(__name__)

DELETE_BATCH = 1000  # S3 DeleteObjects accepts at most 1,000 keys per call.
LIST_PAGE = 1000  # S3 ListObjectsV2 returns at most 1,000 keys per call.
DELETE_ATTEMPTS = 4
RETRY_BASE_DELAY = 0.2  # seconds; doubled per attempt, with jitter
RETRY_MAX_DELAY = 5.0  # seconds
# Transient storage errors; anything else is a bug and propagates.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError, ClientError, OSError)

sleep = time.sleep  # replaced in tests
T = TypeVar("T")


@dataclass
class DeleteOutcome:
    """How many keys were confirmed deleted (or already gone), and the keys that were not."""

    deleted: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    calls: int = 0


@dataclass(frozen=True)
class ListedObject:
    """One object found by a storage listing."""

    key: str
    size: int
    modified: datetime


def is_s3(storage: Storage) -> bool:
    """Whether the storage is django-storages' S3 backend (has a boto3 bucket)."""
    return hasattr(storage, "bucket_name") and hasattr(storage, "bucket")


def _s3_key(storage: Storage, name: str) -> str:
    """The exact key of a storage name: the storage's ``location`` prefix, nothing cleaned.

    django-storages cleans names (``a/../b`` → ``b``, ``a//b`` → ``a/b``) before saving. Keys the
    app writes are already clean (``tasks_app.storage.object_key``), so this is the key it saved;
    a stray key from a listing must be deleted as listed, never as the other object it cleans to.
    """
    location = (getattr(storage, "location", "") or "").strip("/")
    return f"{location}/{name}" if location else name


def _s3_name(storage: Storage, key: str) -> str:
    location = (getattr(storage, "location", "") or "").strip("/")
    if location and key.startswith(f"{location}/"):
        return key[len(location) + 1 :]
    return key


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of up to ``size`` items, consuming ``items`` lazily (itertools.batched is 3.12+)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _backoff(attempt: int) -> float:
    ceiling = min(RETRY_BASE_DELAY * (2 ** (attempt - 1)), RETRY_MAX_DELAY)
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not cryptography


def _reply_errors(response: dict[str, Any]) -> dict[str, str]:
    """Per-key errors of a DeleteObjects reply; a missing key counts as deleted (django-storages' 404 rule)."""
    errors: dict[str, str] = {}
    for error in response.get("Errors", []):
        if error.get("Code") in bucket.MISSING_CODES:
            continue
        errors[error.get("Key", "")] = bucket.described(error)
    return errors


def _s3_delete(storage: Storage, names: list[str]) -> dict[str, str]:
    """One DeleteObjects call (or, in a versioned bucket, one per 1,000 versions); return the names not deleted.

    The request asks for a verbose reply, but stores differ (some answer quietly whatever is
    asked): a key is failed only when the reply lists it under ``Errors``. A ``Deleted`` entry
    with ``DeleteMarker`` means the bucket turned versioned since it was last checked.
    """
    client = bucket.prepare_client(storage.bucket.meta.client)  # type: ignore[attr-defined]
    bucket_name = storage.bucket_name  # type: ignore[attr-defined]
    by_key = {_s3_key(storage, name): name for name in names}
    state = bucket.versioning(client, bucket_name)
    if state.versioned:
        errors = bucket.delete_versions(client, bucket_name, list(by_key), state, batch=DELETE_BATCH)
    else:
        response = client.delete_objects(
            Bucket=bucket_name, Delete={"Objects": [{"Key": key} for key in by_key], "Quiet": False}
        )
        errors = _reply_errors(response)
        markers = [item["Key"] for item in response.get("Deleted", []) if item.get("DeleteMarker")]
        if markers:
            # The objects are still stored behind the markers: finish the job on their versions.
            bucket.mark_versioned(bucket_name)
            versioned = bucket.Versioning(status="Enabled")
            errors.update(bucket.delete_versions(client, bucket_name, markers, versioned, batch=DELETE_BATCH))
    return {by_key.get(key, key): message for key, message in errors.items()}


def check_bucket() -> list[str]:
    """What would stop storage deletion from working (for /healthz); [] when nothing does.

    S3: the bucket is reachable, its versioning can be read, and versions can be deleted
    (not MFA delete). A versioned bucket is fine: every version of a deleted object is deleted.
    """
    storage = default_storage
    if is_s3(storage):
        return bucket.check_bucket(storage)
    return []


def _prune_empty_dirs(storage: Storage, name: str) -> None:
    """Remove the now-empty folders of a deleted local file, up to (not including) the top folder."""
    path = storage.path(name)
    top = storage.path(name.split("/", 1)[0]) if "/" in name else os.path.dirname(path)
    parent = os.path.dirname(path)
    while parent.startswith(top) and parent != top:
        try:
            os.rmdir(parent)
        except OSError:  # not empty (or already gone): stop climbing
            return
        parent = os.path.dirname(parent)


def _local_delete(storage: Storage, names: list[str]) -> dict[str, str]:
    """Delete key by key (FileSystemStorage ignores a missing file); return the names that failed."""
    errors: dict[str, str] = {}
    for name in names:
        try:
            storage.delete(name)
        except FileNotFoundError:
            pass
        except STORAGE_ERRORS as exc:
            errors[name] = repr(exc)
            continue
        if hasattr(storage, "path"):
            try:
                _prune_empty_dirs(storage, name)
            except NotImplementedError:
                pass
    return errors


def _delete_with_retries(
    deleter: Callable[[Storage, list[str]], dict[str, str]], storage: Storage, names: list[str], outcome: DeleteOutcome
) -> dict[str, str]:
    pending, errors = names, {}
    for attempt in range(1, DELETE_ATTEMPTS + 1):
        outcome.calls += 1
        try:
            errors = deleter(storage, pending)
        except STORAGE_ERRORS as exc:
            errors = {name: repr(exc) for name in pending}
        if not errors:
            return {}
        pending = list(errors)
        if attempt < DELETE_ATTEMPTS:
            logger.info("storage delete retry", extra={"attempt": attempt, "keys": len(pending)})
            sleep(_backoff(attempt))
    return errors


def refuse_inside_transaction() -> None:
    """Storage deletes cannot be rolled back, and a transaction held open across one holds its locks
    for as long as the store takes (and may be ended by the server's idle timeout, its work lost).
    Refuse to run inside any transaction (a test case's own wrapping transaction is not one)."""
    if any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks):
        raise RuntimeError(
            "storage objects must be deleted outside a database transaction; call the purge after commit"
        )


def delete_keys(names: Iterable[str]) -> DeleteOutcome:
    """Delete objects by storage name, in batches; never raises for storage errors.

    ``names`` may be a lazy iterator (a manifest streamed from the database): at most one
    batch is held in memory.
    """
    refuse_inside_transaction()
    storage = default_storage
    deleter = _s3_delete if is_s3(storage) else _local_delete
    outcome = DeleteOutcome()
    for batch in batched(names, DELETE_BATCH):
        failed = _delete_with_retries(deleter, storage, batch, outcome)
        outcome.deleted += len(batch) - len(failed)
        outcome.failed.update(failed)
    if outcome.failed:
        logger.warning(
            "storage objects not deleted",
            extra={"count": len(outcome.failed), "keys": sorted(outcome.failed)[:10]},
        )
    return outcome


# --- Listing -------------------------------------------------------------------------------------


def _iter_s3(storage: Storage, prefix: str, start_after: str) -> Iterator[ListedObject]:
    client = storage.bucket.meta.client  # type: ignore[attr-defined]
    params = {"Bucket": storage.bucket_name, "Prefix": _s3_key(storage, prefix), "MaxKeys": LIST_PAGE}  # type: ignore[attr-defined]
    if start_after:
        params["StartAfter"] = _s3_key(storage, start_after)
    while True:
        page = client.list_objects_v2(**params)
        for item in page.get("Contents", []):
            yield ListedObject(key=_s3_name(storage, item["Key"]), size=item["Size"], modified=item["LastModified"])
        if not page.get("IsTruncated"):
            return
        params["ContinuationToken"] = page["NextContinuationToken"]
        params.pop("StartAfter", None)


def _iter_local_dir(root: str, relative: str, start_after: str) -> Iterator[ListedObject]:
    """Files under ``root/relative`` in the byte order S3 lists keys in, skipping keys <= start_after."""
    try:
        entries = list(os.scandir(os.path.join(root, relative)))
    except FileNotFoundError:
        return
    # A folder sorts by its name plus "/" so the walk yields keys in plain string order.
    named = sorted((f"{relative}{e.name}" + ("/" if e.is_dir() else ""), e) for e in entries)
    for name, entry in named:
        if entry.is_dir():
            # Every key below starts with ``name``: skip the folder when the cursor is past all of them.
            if start_after >= name and not start_after.startswith(name):
                continue
            yield from _iter_local_dir(root, name, start_after)
        elif name > start_after:
            stat = entry.stat()
            yield ListedObject(key=name, size=stat.st_size, modified=datetime.fromtimestamp(stat.st_mtime, tz=UTC))


def iter_objects(prefix: str, *, start_after: str = "") -> Iterator[ListedObject]:
    """Objects under ``prefix`` in key order, starting after ``start_after``; lazy, page by page."""
    storage = default_storage
    if is_s3(storage):
        return _iter_s3(storage, prefix, start_after)
    if hasattr(storage, "path"):
        return _iter_local_dir(storage.path(""), prefix, start_after)
    raise NotImplementedError(f"listing is not supported for {type(storage).__name__}")


def list_objects(prefix: str, *, start_after: str = "", limit: int) -> list[ListedObject]:
    """At most ``limit`` objects under ``prefix`` after ``start_after``, in key order."""
    return list(islice(iter_objects(prefix, start_after=start_after), limit))


def prefix_listing(prefix: str) -> dict[str, Any]:
    """What storage holds under ``prefix`` right now: objects, and in a versioned bucket versions and delete markers."""
    storage = default_storage
    listing: dict[str, Any] = {"prefix": prefix, "objects": sum(1 for _ in iter_objects(prefix))}
    if is_s3(storage):
        client = storage.bucket.meta.client  # type: ignore[attr-defined]
        name = storage.bucket_name  # type: ignore[attr-defined]
        if bucket.versioning(client, name).versioned:
            versions = markers = 0
            for page in client.get_paginator("list_object_versions").paginate(
                Bucket=name, Prefix=_s3_key(storage, prefix)
            ):
                versions += len(page.get("Versions", []))
                markers += len(page.get("DeleteMarkers", []))
            listing.update(versions=versions, delete_markers=markers)
    return listing


_object_lock: dict[str, tuple[float, bool]] = {}


def object_lock_enabled() -> bool:
    """Whether the default storage is an S3 bucket with Object Lock enabled (asked at most every
    VERSIONING_RECHECK seconds per process: Object Lock, once enabled, cannot be turned off)."""
    storage = default_storage
    if not is_s3(storage):
        return False
    name = storage.bucket_name  # type: ignore[attr-defined]
    known = _object_lock.get(name)
    if known is not None and (known[1] or time.monotonic() - known[0] < bucket.VERSIONING_RECHECK):
        return known[1]
    client = storage.bucket.meta.client  # type: ignore[attr-defined]
    try:
        answer = client.get_object_lock_configuration(Bucket=name)
        enabled = answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ObjectLockConfigurationNotFoundError":
            raise
        enabled = False
    _object_lock[name] = (time.monotonic(), enabled)
    return enabled


def put_locked(name: str, body: bytes, *, mode: str, until: datetime) -> None:
    """Write ``body`` under ``name`` with an Object Lock retention (the bucket must have Object Lock)."""
    refuse_inside_transaction()
    storage = default_storage
    client = storage.bucket.meta.client  # type: ignore[attr-defined]
    client.put_object(
        Bucket=storage.bucket_name,  # type: ignore[attr-defined]
        Key=_s3_key(storage, name),
        Body=body,
        ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 - S3's integrity header
        ObjectLockMode=mode,
        ObjectLockRetainUntilDate=until,
    )


def read_locked(name: str) -> bytes | None:
    """The bytes ``put_locked`` stored under ``name``, or None when there is no such object."""
    storage = default_storage
    client = storage.bucket.meta.client  # type: ignore[attr-defined]
    try:
        answer = client.get_object(Bucket=storage.bucket_name, Key=_s3_key(storage, name))  # type: ignore[attr-defined]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return bytes(answer["Body"].read())
