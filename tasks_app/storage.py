"""Where a task's files live: keys under ``tasks/<task_id>/`` in the default storage.

Only tasks_app writes objects (``ctx.save_file``, ``input_file``); only retention deletes them.
"""

from __future__ import annotations

import posixpath
import uuid

from django.core.files.base import ContentFile, File
from django.core.files.storage import Storage, default_storage
from django.utils import timezone
from django.utils.text import get_valid_filename

from tasks_app.models import StoredObject, Task

PREFIX = "tasks/"


def task_prefix(task_id: uuid.UUID | str) -> str:
    """Return the key prefix every object of the task lives under."""
    return f"{PREFIX}{uuid.UUID(str(task_id))}/"


def task_id_from_key(key: str) -> uuid.UUID | None:
    """Return the task id encoded in ``tasks/<id>/…``, or None for any other key."""
    if not key.startswith(PREFIX):
        return None
    head = key[len(PREFIX) :].split("/", 1)[0]
    try:
        return uuid.UUID(head)
    except ValueError:
        return None


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


def save_object(
    task: Task,
    name: str,
    content: File | bytes | str,
    *,
    kind: str,
    folder: str = "files",
    storage: Storage | None = None,
) -> StoredObject:
    """Upload one file of the task and record it in the manifest.

    The manifest row is written before the upload: a crash in between leaves a row whose
    object is missing (reported and treated as deleted by retention), never an untracked
    object.
    """
    storage = storage or default_storage
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, bytes):
        content = ContentFile(content)
    key = object_key(task.id, folder, name)
    # A re-executed handler writes the same key again: one manifest row, object overwritten.
    record, created = StoredObject.objects.update_or_create(
        key=key, defaults={"task": task, "kind": kind, "size": content.size, "created_at": timezone.now()}
    )
    try:
        saved_key = storage.save(key, content)
    except BaseException:
        if created:
            record.delete()
        raise
    if saved_key != key:
        raise RuntimeError(f"storage renamed {key!r} to {saved_key!r}; it must overwrite in place")
    return record
