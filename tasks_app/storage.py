"""Where a task's files live: keys under ``tasks/<task_id>/`` in the default storage.

Only tasks_app writes objects (``ctx.save_file``, ``input_file``); only retention deletes them.
No upload runs inside a transaction of ours: a handler's file is recorded first, then uploaded;
a submission's input is uploaded first, then recorded with its task (services.submit).
"""

from __future__ import annotations

import logging
import posixpath
import uuid

from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.text import get_valid_filename

from tasks_app.exceptions import LeaseLost
from tasks_app.models import StoredObject, Task, TaskStatus

logger = logging.getLogger(__name__)

PREFIX = "tasks/"


def task_prefix(task_id: uuid.UUID | str) -> str:
    """Return the key prefix every object of the task lives under."""
    return f"{PREFIX}{uuid.UUID(str(task_id))}/"


def task_id_from_key(key: str) -> uuid.UUID | None:
    """Return the task id whose prefix (``task_prefix``) the key lives under, or None for any other key."""
    if not key.startswith(PREFIX):
        return None
    head, slash, _ = key[len(PREFIX) :].partition("/")
    try:
        task_id = uuid.UUID(head)
    except ValueError:
        return None
    # uuid.UUID also reads "ABC…", "{…}", "urn:uuid:…" and undashed hex, but keys are case-
    # sensitive: such a key is not under the task's prefix, so it must not be taken for the task's.
    if not slash or str(task_id) != head:
        return None
    return task_id


def safe_name(name: str, fallback: str = "file") -> str:
    """Reduce a client-supplied file name to one safe path segment (no ``/``, ``..`` or NUL)."""
    base = posixpath.basename(str(name).replace("\\", "/").replace("\x00", ""))
    try:
        cleaned = get_valid_filename(base)
    except Exception:  # Django raises SuspiciousFileOperation for "", "." and ".."
        cleaned = ""
    cleaned = cleaned.lstrip(".")[:200]
    return cleaned or fallback


def object_key(task_id: uuid.UUID | str, folder: str, name: str) -> str:
    """Return the key for a file of the task; it can never leave the task's prefix."""
    key = f"{task_prefix(task_id)}{safe_name(folder, 'files')}/{safe_name(name)}"
    if posixpath.normpath(key) != key or not key.startswith(task_prefix(task_id)):
        raise ValueError(f"unsafe object key {key!r}")
    return key


def _hold_attempt(task_id: uuid.UUID, attempt: int) -> None:
    """Inside a transaction: share-lock the task row while ``attempt`` still runs it, else LeaseLost.

    Recovery and retention take rows with FOR UPDATE / FOR NO KEY UPDATE SKIP LOCKED, so they
    pass this task by until the write commits; the purge that follows then sees the file.
    """
    table = Task._meta.db_table
    lock = " FOR SHARE" if connection.vendor == "postgresql" else ""  # SQLite: its write lock serialises
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {table} WHERE id = %s AND status = %s AND attempts = %s{lock}",  # noqa: S608 - our table name
            [task_id.hex if connection.vendor != "postgresql" else task_id, TaskStatus.RUNNING, attempt],
        )
        if cursor.fetchone() is None:
            raise LeaseLost(f"task {task_id} attempt {attempt} no longer holds its lease")


def _as_file(content: File | bytes | str) -> File:
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, bytes):
        content = ContentFile(content)
    return content


def upload(key: str, content: File) -> None:
    """Write one object at exactly ``key`` (overwriting); never called inside a transaction of ours."""
    saved_key = default_storage.save(key, content)
    if saved_key != key:
        raise RuntimeError(f"storage renamed {key!r} to {saved_key!r}; it must overwrite in place")


def save_object(
    task: Task,
    name: str,
    content: File | bytes | str,
    *,
    kind: str,
    folder: str = "files",
    attempt: int | None = None,
) -> StoredObject:
    """Record one file of the task in its manifest, then upload it with no transaction open.

    With ``attempt`` (a handler's ``ctx.save_file``) the row is written only while that attempt
    still runs the task, checked under a share lock on its row in the same short transaction.
    The row comes first, so the manifest lists every object the task may have and its purge
    deletes them all; an upload that fails leaves a row whose object is missing (a purge counts it
    as deleted, the orphan sweep reports it). A slow upload holds no lock and no transaction: a
    legal hold or a purge never waits for it, and no idle-transaction timeout ends it. The row is
    written again after the upload if a purge removed it meanwhile (see below).
    """
    content = _as_file(content)
    key = object_key(task.id, folder, name)
    with transaction.atomic():
        if attempt is not None:
            _hold_attempt(task.id, attempt)
        # A re-executed handler writes the same key again: one manifest row, object overwritten.
        defaults = {"task": task, "kind": kind, "size": content.size, "created_at": timezone.now()}
        record, _ = StoredObject.objects.update_or_create(key=key, defaults=defaults)
    upload(key, content)
    # The attempt may have lost the task while it uploaded (a frozen worker), and a purge of the
    # task or its result may have deleted the key and removed its row meanwhile: the row goes
    # back, so the manifest still lists the object and the next sweep deletes it (on a tombstone,
    # the row is residue the orphan sweep takes with its object).
    try:
        record, _ = StoredObject.objects.get_or_create(key=key, defaults=defaults)
    except IntegrityError:
        logger.warning("file uploaded for a task that no longer exists", extra={"task_id": str(task.id)})
    return record
