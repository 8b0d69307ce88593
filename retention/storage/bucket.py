"""What S3-compatible buckets differ in, for deletion: Content-MD5, versioning, and health problems.

Only the API subset every S3-compatible store implements is used (DeleteObjects, ListObjectsV2,
ListObjectVersions, GetBucketVersioning, HeadBucket).

- botocore >= 1.36 sends ``DeleteObjects`` with a CRC32 checksum and no ``Content-MD5``; MinIO,
  Ceph RGW and other stores still refuse it without one. A ``before-sign`` handler adds it.
- A versioned bucket keeps the data behind a delete marker. Deleting a key there means deleting
  every version of it (and the markers): this module does that, and reports a key whose versions
  it could not remove as not deleted, so its task stays ``purging`` instead of being audited.
  A bucket with MFA delete cannot have versions deleted by an API key: every delete is refused.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

logger = logging.getLogger(__name__)

# A key (or version) already gone counts as deleted (django-storages' 404 rule).
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})
# A store without the versioning API (R2, some gateways) has no versions to keep.
UNSUPPORTED_CODES = frozenset({"NotImplemented", "XNotImplemented", "MethodNotAllowed", "UnsupportedOperation"})
VERSIONING_RECHECK = 60.0  # seconds between GetBucketVersioning calls per process and bucket
_MD5_HANDLER_ID = "retention-delete-objects-content-md5"


def add_content_md5(request: Any, **kwargs: Any) -> None:
    """botocore ``before-sign`` handler: give a request body its Content-MD5 header (signed with it)."""
    if "Content-MD5" in request.headers:
        return
    body = request.body
    if isinstance(body, bytes | bytearray):
        # Not a security use: the header is the integrity check S3 defines for this call.
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode("ascii")


def prepare_client(client: Any) -> Any:
    """Make the client's DeleteObjects calls carry Content-MD5 (idempotent: registered once per client)."""
    client.meta.events.register("before-sign.s3.DeleteObjects", add_content_md5, unique_id=_MD5_HANDLER_ID)
    return client


def error_text(exc: BaseException) -> str:
    """A short description of a storage error: the S3 error code when there is one."""
    if isinstance(exc, ClientError):
        return described(exc.response.get("Error", {}))
    return repr(exc)


def described(error: dict[str, Any]) -> str:
    """An S3 error (a reply's ``Error``, or one entry of a DeleteObjects reply's ``Errors``) as "Code: Message"."""
    return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".strip().rstrip(":")


# --- Versioning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Versioning:
    """A bucket's versioning as last read: ``status`` is "", "Enabled" or "Suspended"."""

    status: str = ""
    mfa_delete: bool = False
    error: str = ""  # why it could not be read ("" when known)
    transient: bool = False  # the store did not answer (down, 5xx): ask again next time

    @property
    def versioned(self) -> bool:
        # A suspended bucket still holds the versions written while it was enabled.
        return self.status in ("Enabled", "Suspended")


_lock = threading.Lock()
_known: dict[str, tuple[float, Versioning]] = {}


def read_versioning(client: Any, bucket: str) -> Versioning:
    """Ask the store (GetBucketVersioning) whether the bucket keeps versions."""
    try:
        answer = client.get_bucket_versioning(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in UNSUPPORTED_CODES:
            return Versioning()
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return Versioning(error=error_text(exc), transient=status >= 500)
    except BotoCoreError as exc:
        return Versioning(error=error_text(exc), transient=True)
    return Versioning(status=answer.get("Status", ""), mfa_delete=answer.get("MFADelete") == "Enabled")


def versioning(client: Any, bucket: str, *, now: float | None = None) -> Versioning:
    """The bucket's versioning, read at most every VERSIONING_RECHECK seconds per process."""
    now = time.monotonic() if now is None else now
    with _lock:
        cached = _known.get(bucket)
    if cached is not None and now - cached[0] < VERSIONING_RECHECK:
        return cached[1]
    state = read_versioning(client, bucket)
    if state.error:
        # Deleting stays possible (plain deletes); /healthz reports the problem via check_bucket().
        logger.warning("bucket versioning unknown", extra={"bucket": bucket, "error": state.error})
    elif state.versioned and (cached is None or not cached[1].versioned):
        logger.warning(
            "bucket is versioned: deleting every version of each object", extra={"bucket": bucket, **vars(state)}
        )
    if not state.transient:
        with _lock:
            _known[bucket] = (now, state)
    return state


def mark_versioned(bucket: str) -> None:
    """Remember that the bucket answered a delete with a delete marker (versioning was just enabled)."""
    with _lock:
        _known[bucket] = (time.monotonic(), Versioning(status="Enabled"))


def forget_versioning() -> None:
    """Drop what this process knows about buckets' versioning (tests; a bucket reconfigured)."""
    with _lock:
        _known.clear()


def _folders(keys: Iterable[str]) -> list[str]:
    """The listing prefixes that cover ``keys``: each key's folder (``tasks/<id>/files/``)."""
    return sorted({posixpath.dirname(key) + "/" if "/" in key else key for key in keys})


def list_versions(client: Any, bucket: str, keys: Iterable[str]) -> dict[str, list[str]]:
    """Every version id (delete markers included) of each of ``keys`` that has any."""
    wanted = set(keys)
    found: dict[str, list[str]] = {}
    paginator = client.get_paginator("list_object_versions")
    for prefix in _folders(wanted):
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if item["Key"] in wanted:
                    found.setdefault(item["Key"], []).append(item["VersionId"])
    return found


def delete_versions(client: Any, bucket: str, keys: list[str], state: Versioning, *, batch: int) -> dict[str, str]:
    """Delete every version of each key, ``batch`` a call; return the keys still holding data, with the reason."""
    if state.mfa_delete:
        reason = "MFADelete: the bucket has MFA delete enabled; object versions cannot be deleted by retention"
        return dict.fromkeys(keys, reason)
    versions = list_versions(client, bucket, keys)
    entries = [{"Key": key, "VersionId": version} for key, ids in versions.items() for version in ids]
    errors: dict[str, str] = {}
    for start in range(0, len(entries), batch):
        chunk = entries[start : start + batch]
        response = client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        for error in response.get("Errors", []):
            if error.get("Code") not in MISSING_CODES:
                errors[error.get("Key", "")] = described(error)
    # Confirm rather than trust the reply: a version written meanwhile, or one a store skipped
    # without an error, keeps the key "not deleted" and the purge retries it.
    for key in list_versions(client, bucket, [key for key in keys if key not in errors]):
        errors[key] = "a version of the object is still stored after deleting its versions"
    return errors


# --- Health --------------------------------------------------------------------------------------


def check_bucket(storage: Any) -> list[str]:
    """Problems that would stop retention from deleting in this S3 storage ([] when none)."""
    client = prepare_client(storage.bucket.meta.client)
    name = storage.bucket_name
    try:
        client.head_bucket(Bucket=name)
    except (BotoCoreError, ClientError) as exc:
        return [f"bucket {name!r} is not reachable: {error_text(exc)}"]
    state = read_versioning(client, name)
    with _lock:
        _known[name] = (time.monotonic(), state)
    if state.error:
        return [f"bucket {name!r}: cannot read its versioning ({state.error}); deleted objects may keep versions"]
    if state.versioned and state.mfa_delete:
        return [f"bucket {name!r} is versioned with MFA delete: retention cannot delete object versions"]
    return []
