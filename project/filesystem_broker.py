"""The embedded broker: kombu's file-system transport, made safe for concurrent writers and readers.

kombu's own ``filesystem://`` transport creates a message file under its final name and then
writes it, so a worker polling the folder can take a file that is still empty or half written,
fail to decode it and stop (kombu issue #1551: ``Unrecoverable error: JSONDecodeError``). Here a
message is written in full to a staging folder and then renamed into the queue folder, and a
reader takes a file by renaming it into a claim folder: both renames are atomic on one file
system, so a reader sees whole messages only and two readers never take the same one. A file that
still cannot be decoded is set aside (and logged), never raised into the worker's consumer.

Selected by ``CELERY_BROKER_TRANSPORT`` when ``CELERY_BROKER_URL`` is ``filesystem://``; its
folders come from the transport options (``project/settings.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)


# A claimed message is read and removed within microseconds of its claim; one still claimed this
# long after (its ctime: the rename) belongs to a reader that died in between, and is put back.
ABANDONED_CLAIM = 60.0


class Channel(filesystem.Channel):
    """Writes each message whole, then renames it into place; takes one by renaming it away."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._return_abandoned_claims()

    def _return_abandoned_claims(self) -> None:
        claims = self._folder("claim_folder")
        for claimed in claims.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if time.time() - claimed.stat().st_ctime > ABANDONED_CLAIM:
                    os.rename(claimed, Path(self.data_folder_in) / claimed.name)
                    logger.warning("broker message of a reader that died put back", extra={"path": str(claimed)})

    def _folder(self, option: str) -> Path:
        folder = Path(self.transport_options[option])
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # The name orders messages by time (kombu's own scheme: reader sorts the folder).
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        staged = self._folder("staging_folder") / name
        try:
            with open(staged, "wb") as f:
                f.write(str_to_bytes(dumps(message)))
            os.replace(staged, Path(self.data_folder_out) / name)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise filesystem.ChannelError(f"Cannot add message {name!r} to {self.data_folder_out!r}") from exc

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        suffix = f".{queue}.msg"
        folder = Path(self.data_folder_in)
        claims = self._folder("claim_folder")
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != suffix[1:]:
                continue
            claimed = claims / name
            try:
                os.rename(folder / name, claimed)
            except FileNotFoundError:
                continue  # another reader took it first
            try:
                payload = claimed.read_bytes()
                message = loads(bytes_to_str(payload))
            except ValueError:
                rejected = self._folder("rejected_folder") / name
                os.replace(claimed, rejected)
                logger.error("broker message could not be decoded; set aside", extra={"path": str(rejected)})
                continue
            if self.store_processed:
                os.replace(claimed, Path(self.processed_folder) / name)
            else:
                claimed.unlink()
            return message
        raise Empty()


class Transport(filesystem.Transport):
    """``filesystem://`` with whole-message writes and exclusive reads (see the module's docstring)."""

    Channel = Channel
