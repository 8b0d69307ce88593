"""The embedded broker (project/filesystem_broker.py): whole messages only, each taken once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from project import filesystem_broker

TRANSPORT = "project.filesystem_broker:Transport"
WRITERS = 4
PER_WRITER = 1500


def options(root: Path) -> dict[str, object]:
    folders = {
        "data_folder_in": "messages",
        "data_folder_out": "messages",
        "processed_folder": "processed",
        "control_folder": "control",
        "staging_folder": "staging",
        "claim_folder": "claimed",
        "rejected_folder": "rejected",
    }
    for folder in set(folders.values()):
        (root / folder).mkdir(exist_ok=True)
    return {option: str(root / folder) for option, folder in folders.items()} | {"polling_interval": 0.001}


def connect(root: Path) -> Connection:
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options(root))


def write(root: Path, writer: int) -> None:
    # A large body widens the window in which a reader could see a file half written.
    padding = "x" * 64_000
    with connect(root) as conn:
        queue = conn.SimpleQueue("burst")
        for i in range(PER_WRITER):
            queue.put({"writer": writer, "i": i, "padding": padding})


def read(root: Path, into: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    seen = []
    with connect(root) as conn:
        queue = conn.SimpleQueue("burst")
        while True:
            try:
                message = queue.get(timeout=5)
            except Empty:
                break
            seen.append((message.payload["writer"], message.payload["i"]))
            message.ack()
    into.put(seen)


def test_concurrent_writers_and_readers_see_whole_messages_each_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue = context.Queue()  # type: ignore[type-arg]
    # Two readers poll while four writers write: each message is decoded whole, by one reader.
    readers = [context.Process(target=read, args=(tmp_path, results)) for _ in range(2)]
    writers = [context.Process(target=write, args=(tmp_path, w)) for w in range(WRITERS)]
    for process in readers + writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    seen = [item for _ in readers for item in results.get(timeout=120)]
    for process in readers:
        process.join(30)
        assert process.exitcode == 0
    assert len(seen) == WRITERS * PER_WRITER
    assert set(seen) == {(w, i) for w in range(WRITERS) for i in range(PER_WRITER)}
    assert not list((tmp_path / "rejected").iterdir())
    assert not list((tmp_path / "staging").iterdir())
    assert not list((tmp_path / "claimed").iterdir())


def test_an_undecodable_file_is_set_aside_and_the_next_message_is_delivered(tmp_path: Path) -> None:
    with connect(tmp_path) as conn:
        queue = conn.SimpleQueue("burst")
        (tmp_path / "messages" / "1_bad.burst.msg").write_bytes(b'{"half')
        queue.put({"ok": True})
        message = queue.get(timeout=5)
        assert message.payload == {"ok": True}
    assert [p.name for p in (tmp_path / "rejected").iterdir()] == ["1_bad.burst.msg"]


def test_a_message_claimed_by_a_reader_that_died_is_put_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # given a message a reader renamed into the claim folder and never read (it died), and one just claimed
    options(tmp_path)
    stale = tmp_path / "claimed" / "1_dead.burst.msg"
    stale.write_bytes(b'{"body": "x"}')
    time.sleep(1.2)
    fresh = tmp_path / "claimed" / "2_live.burst.msg"
    fresh.write_bytes(b'{"body": "y"}')
    monkeypatch.setattr(filesystem_broker, "ABANDONED_CLAIM", 1.0)

    # when a channel opens (a worker starting), then the old claim is back in the queue, the new one stays
    with connect(tmp_path) as conn:
        conn.default_channel  # noqa: B018 - opening the channel is the step under test
    assert (tmp_path / "messages" / "1_dead.burst.msg").exists()
    assert not stale.exists()
    assert fresh.exists()
