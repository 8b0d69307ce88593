"""The files a task's owner may download: which are listed, whether one is still readable, and how.

Input files are readable while the task's data lives; result files (every other kind) while the
result does too. On S3 a download is a presigned GET (``TASKS_DOWNLOAD_URL_TTL``, short: it is a
bearer link) computed locally, with no call to the store; on local storage the API streams the
file. Neither runs inside a transaction.
"""

from __future__ import annotations

import posixpath
from datetime import datetime
from typing import Any

from django.core.files.storage import default_storage

from tasks_app import conf
from tasks_app.exceptions import ResultGone
from tasks_app.models import StoredObject, Task

READ_FIELDS = ("id", "task_id", "kind", "key", "size", "created_at")


def _result_gone(task: Task, now: datetime) -> bool:
    return task.result_expires_at is not None and task.result_expires_at <= now


def listed(task: Task, *, now: datetime) -> list[StoredObject]:
    """The task's files its owner may still read, oldest first (result files go with the result)."""
    files = StoredObject.objects.filter(task=task).only(*READ_FIELDS).order_by("created_at", "id")
    if _result_gone(task, now):
        files = files.filter(kind=StoredObject.INPUT_KIND)
    return list(files)


def readable(task: Task, file_id: Any, *, now: datetime) -> StoredObject | None:
    """The task's file ``file_id``; None if it has none such; ResultGone once it expired with the result.

    The caller has checked the task's own data is not gone (that is a 410 for every file).
    """
    try:
        file_id = int(file_id)
    except (TypeError, ValueError):
        return None
    stored = StoredObject.objects.filter(task=task, pk=file_id).only(*READ_FIELDS).first()
    if stored is not None and stored.kind != StoredObject.INPUT_KIND and _result_gone(task, now):
        raise ResultGone(f"the result of task {task.pk} expired")
    return stored


def name_of(stored: StoredObject) -> str:
    """The file's name as a download offers it: the last segment of its key."""
    return posixpath.basename(stored.key)


def presigned_url(stored: StoredObject) -> str | None:
    """A short-lived presigned GET of the object on S3; None when the storage is not a bucket."""
    storage: Any = default_storage  # django-storages' S3Storage has no type information
    if not getattr(storage, "bucket_name", None):
        return None
    disposition = f'attachment; filename="{name_of(stored)}"'
    return str(
        storage.url(
            stored.key,
            parameters={"ResponseContentDisposition": disposition},
            expire=int(conf.download_url_ttl().total_seconds()),
        )
    )


def open_local(stored: StoredObject) -> Any:
    """The object opened for reading from local storage (FileNotFoundError once deleted)."""
    return default_storage.open(stored.key, "rb")
