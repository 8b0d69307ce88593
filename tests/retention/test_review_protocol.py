"""An attacker's review of the deletion protocol (issue 17, commit "The deletion protocol, correct by construction").

Every test here FAILS on that commit and names the promise it breaks:
no storage call (or other side effect) inside a database transaction; a hold never waits for a
storage call; every decision fenced and re-checked; a crash finished by the next sweep with one
audit record; PgBouncer (transaction mode) and the embedded SQLite mode alike.
Real PostgreSQL and the S3 endpoint throughout (``python -m tests.real_services``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.db import connection, transaction
from django.utils import timezone

from retention import services
from retention.deletion import claims, purge
from retention.models import AuditRecord, LegalHold
from retention.sweeping import sweeps
from tasks_app.models import StoredObject, Task, TaskStatus
from tests.threads import in_thread

pytestmark = pytest.mark.pgbouncer  # also run through PgBouncer (make test's second pass)

# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def idle_transactions_killed_after_one_second() -> Iterator[None]:
    """Every transaction of this connection ends if idle for 1 s (an operator's
    ``idle_in_transaction_session_timeout``, or PgBouncer's ``idle_transaction_timeout``).
    SET LOCAL, so it also holds behind PgBouncer in transaction mode (as in test_protocol.py)."""

    def set_timeout(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if context["connection"].in_atomic_block:
            with context["connection"].connection.cursor() as cursor:
                cursor.execute("SET LOCAL idle_in_transaction_session_timeout = '1s'")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(set_timeout):
        yield
    connection.close()  # the server may have ended the session


class SlowStorage:
    """The default storage, with uploads (``save``) that take ``delay`` seconds (a large file, a slow store)."""

    def __init__(self, real: Any, delay: float) -> None:
        self._real = real
        self._delay = delay
        self.started = threading.Event()

    def save(self, name: str, content: Any, max_length: Any = None) -> str:
        self.started.set()
        time.sleep(self._delay)
        return self._real.save(name, content, max_length=max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _slow_uploads(monkeypatch: pytest.MonkeyPatch, delay: float) -> SlowStorage:
    from django.core.files.storage import default_storage

    from tasks_app import storage as task_storage

    slow = SlowStorage(default_storage, delay)
    monkeypatch.setattr(task_storage, "default_storage", slow)
    return slow


# --- 1. The writer side: ctx.save_file and submit(input_file=…) upload inside a transaction -----------


@pytest.mark.django_db(transaction=True)
def test_ctx_save_file_slower_than_the_idle_transaction_timeout_is_still_recorded(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, bucket_keys: Any,
    idle_transactions_killed_after_one_second: None,
) -> None:  # fmt: skip
    from tasks_app.executor import TaskContext

    # given a running task, a database that ends transactions idle for 1 s (as production does),
    # and a store that takes 2 s to upload a file
    task = make_task("demo.report", status=TaskStatus.RUNNING, attempts=1, finished_at=None)
    _slow_uploads(monkeypatch, 2.0)
    ctx = TaskContext(Task.objects.get(pk=task.pk))

    # when the handler saves a file through ctx.save_file
    error: BaseException | None = None
    try:
        ctx.save_file("page-1.png", b"png", kind="page_image")
    except BaseException as exc:  # noqa: BLE001 - the failure is what the test reports
        error = exc
    connection.close()

    # then the file is uploaded AND in the manifest (so the purge deletes it): the upload must not
    # run inside the transaction that holds the manifest row and the task's share lock
    assert error is None, f"ctx.save_file failed: the upload ran inside a transaction the server ended ({error!r})"
    assert StoredObject.objects.filter(task_id=task.pk, kind="page_image").count() == 1
    assert bucket_keys(f"tasks/{task.pk}/") == {f"tasks/{task.pk}/page_image/page-1.png"}


@pytest.mark.django_db(transaction=True)
def test_submit_with_an_input_file_slower_than_the_idle_transaction_timeout_succeeds(
    monkeypatch: pytest.MonkeyPatch, bucket_keys: Any, idle_transactions_killed_after_one_second: None
) -> None:
    from tasks_app.services import submit

    # given a database that ends transactions idle for 1 s and a store that takes 2 s per upload
    _slow_uploads(monkeypatch, 2.0)

    # when a client submits a task with an input file (the API's multipart POST does this)
    error: BaseException | None = None
    try:
        submit("demo.echo", {"n": 1}, input_file=ContentFile(b"input", name="in.bin"))
    except BaseException as exc:  # noqa: BLE001
        error = exc
    connection.close()

    # then the task and its input are recorded; nothing is left in the bucket without a manifest row
    assert error is None, f"submit(input_file=…) failed: the upload ran inside a transaction ({error!r})"
    assert Task.objects.count() == 1
    task = Task.objects.get()
    assert StoredObject.objects.filter(task=task, kind="input").count() == 1
    assert len(bucket_keys(f"tasks/{task.pk}/")) == 1


# --- 2. The orphan sweep waits inside the fence for somebody else's open transaction ----------------


def _submit_and_wait(uploaded: threading.Event, go: threading.Event, then: Any = None) -> Any:
    """A web request (or user code) that submits a task with an input file inside its own transaction
    and does something else before committing."""
    from tasks_app.services import submit

    with transaction.atomic():
        task = submit("demo.echo", {"n": 1}, input_file=ContentFile(b"input", name="in.bin"))
        uploaded.set()
        assert go.wait(timeout=30)
        if then is not None:
            then(task)
    return task


@pytest.mark.django_db(transaction=True)
def test_an_orphan_sweep_never_makes_a_hold_or_other_purges_wait_for_another_transaction(
    make_task: Any, settings: Any, empty_bucket: None
) -> None:
    # given no orphan grace (RETENTION_ORPHAN_GRACE=0 is allowed), an unrelated task, another task
    # claimed for purging, and a request that submitted a task with an input file and has not
    # committed yet (its upload is already in the bucket)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    now = timezone.now()
    unrelated = make_task("t.unrelated")
    other = make_task("t.other", expires_at=now)
    claims.claim(Task.objects.filter(pk=other.pk), reason="expires_at", now=now, limit=1)
    uploaded, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    request = in_thread(lambda: _submit_and_wait(uploaded, go), out, "request")
    assert uploaded.wait(timeout=30)

    # when an orphan sweep lists that object (it waits to learn whether the task commits) ...
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    time.sleep(1.5)
    # ... and meanwhile an operator places a legal hold on an unrelated task, and a purge runs
    release = threading.Timer(6.0, go.set)
    release.start()
    took: dict[str, float] = {}

    def timed_hold() -> None:
        started = time.monotonic()
        services.hold(task=unrelated, reason="subpoena")
        took["hold"] = time.monotonic() - started

    holder = in_thread(timed_hold, out, "hold")
    time.sleep(0.3)
    started = time.monotonic()
    purged = purge.purge_claimed([other.pk], now=now).purged
    took["purge"] = time.monotonic() - started
    holder.join(timeout=60)
    go.set()
    release.cancel()
    request.join(timeout=60)
    sweeper.join(timeout=60)

    # then the hold was saved at once and the other purge went on: the orphan sweep must not hold
    # the fence while it waits for another transaction (an upload, or any user code not committed)
    assert not isinstance(out.get("request"), BaseException), out
    assert purged == 1
    waited = f"the hold waited {took['hold']:.1f} s (a purge {took['purge']:.1f} s) for another's transaction"
    assert took["hold"] < 1.0, waited
    assert took["purge"] < 1.0, f"an unrelated purge waited {took['purge']:.1f} s behind it"


@pytest.mark.django_db(transaction=True)
def test_a_hold_placed_with_the_submission_in_one_transaction_does_not_deadlock_with_the_orphan_sweep(
    settings: Any, empty_bucket: None
) -> None:
    # given no orphan grace, and user code that submits a task with an input file and, in the same
    # transaction, places a legal hold on it (a "keep everything of this case" intake)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    uploaded, go = threading.Event(), threading.Event()
    out: dict[str, Any] = {}
    request = in_thread(
        lambda: _submit_and_wait(uploaded, go, then=lambda task: services.hold(task=task, reason="intake")),
        out,
        "request",
    )
    assert uploaded.wait(timeout=30)

    # when an orphan sweep lists the uploaded input before that transaction commits
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    time.sleep(1.5)
    go.set()
    request.join(timeout=60)
    sweeper.join(timeout=60)

    # then both finish: neither the user's transaction nor the sweep is chosen as a deadlock victim
    assert not isinstance(out.get("request"), BaseException), f"the submission failed: {out.get('request')!r}"
    assert not isinstance(out.get("sweep"), BaseException), f"the orphan sweep failed: {out.get('sweep')!r}"
    run = out["sweep"]
    assert run is None or not run.errors, run.errors
    assert LegalHold.objects.count() == 1


# --- 3. A deciding step is not short: count-cap claims re-decided one query pair per claim ----------


@pytest.mark.django_db(transaction=True)
def test_a_policy_edit_does_not_make_the_next_purge_step_hold_the_fence_for_seconds(
    no_default_policy: None, make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retention.audit import records as audit
    from retention.models import RetentionPolicy
    from retention.rules import policies

    # given a count cap keeping the newest 5,000 dead t.cap tasks (the shipped default policy keeps
    # 10,000), 6,000 of them, and the 1,000 oldest claimed by that cap (one purge window)
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.cap", status=TaskStatus.DEAD, keep_last=5000)
    Task.objects.bulk_create(
        Task(
            task_type="t.cap",
            status=TaskStatus.DEAD,
            payload={},
            timeout=timedelta(minutes=1),
            created_at=now - timedelta(days=30),
            status_changed_at=now - timedelta(days=30),
            finished_at=now - timedelta(days=30) + timedelta(seconds=n),
        )
        for n in range(6000)
    )
    reason = audit.policy_claim(audit.count_cap_reason(policy.pk), policies.version())
    ids = claims.claim(policies.count_due(policy, policies.enabled_policies(), "t.cap", TaskStatus.DEAD),
                       reason=reason, now=now, limit=1000, order_by=("finished_at", "pk"))  # fmt: skip
    assert len(ids) == 1000
    unrelated = make_task("t.unrelated")

    # when an operator edits an unrelated policy (the table's version changes) while the purge runs,
    # and places a hold on an unrelated task just as the purge's first step re-decides its claims
    RetentionPolicy.objects.create(task_type="t.other", keep_for=timedelta(days=7))
    redeciding = threading.Event()
    real = policies._over_cap

    def watched(*args: Any, **kwargs: Any) -> Any:
        redeciding.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(policies, "_over_cap", watched)
    out: dict[str, Any] = {}
    purger = in_thread(lambda: purge.purge_claimed(ids, now=now), out, "purge")
    assert redeciding.wait(timeout=60)
    started = time.monotonic()
    services.hold(task=unrelated, reason="subpoena")
    took = time.monotonic() - started
    purger.join(timeout=300)

    # then the hold was saved within a second (a deciding step is short), and every claim, still
    # over the cap under the rules as they are now, was purged
    assert out["purge"].purged == 1000, out["purge"]
    assert took < 1.0, f"the hold waited {took:.1f} s for one deciding step"


# --- 4. Orphans: a crash in the first page of a listing pass audits one task's orphans twice ---------


@pytest.mark.django_db(transaction=True)
def test_a_crash_in_the_first_orphan_page_still_audits_each_tasks_orphans_once(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None, bucket_keys: Any
) -> None:
    from django.core.files.storage import default_storage

    from retention.orphans import listing as orphans

    # given a purged task with five late objects under its prefix, listed three per page
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    settings.RETENTION_BATCH_SIZE = 3
    task = make_task(expires_at=timezone.now())
    services.purge_now(task)
    for n in range(5):
        default_storage.save(f"tasks/{task.pk}/late/{n}.bin", ContentFile(b"late"))

    # when the first orphan sweep of a listing pass dies after deleting its first page's orphans,
    # before it saved the cursor (a worker killed, a lost connection) ...
    real_renew = orphans.Listing.renew
    calls = {"n": 0}

    def dies_once(self: Any, position: str) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker killed")
        return real_renew(self, position)

    monkeypatch.setattr(orphans.Listing, "renew", dies_once)
    with pytest.raises(RuntimeError):
        sweeps.sweep_orphans(timezone.now())
    # ... and the next sweep finishes the job
    sweeps.sweep_orphans(timezone.now())

    # then every late object is gone and the task's orphans are audited once, all five together
    assert bucket_keys(f"tasks/{task.pk}/") == set()
    records = list(AuditRecord.objects.filter(action="orphan_deleted").values_list("task_id", "objects_deleted"))
    assert records == [(task.pk, 5)]


# --- 5. The embedded mode: an upload holds SQLite's write lock, and a hold waits for it -------------


def test_in_the_embedded_mode_a_hold_never_waits_for_an_upload(tmp_path: Any) -> None:
    from tests.embedded import run_embedded

    # given the embedded mode (SQLite; web, worker and beat as separate processes), a handler
    # uploading a file that takes 3 s through ctx.save_file
    # when an operator saves a legal hold (on anything) during that upload
    outcome = run_embedded("tests.retention.review_embedded", tmp_path, timeout=240)

    # then the hold is saved at once and the file is recorded: no storage call holds the write lock
    assert outcome["errors"] == [], outcome
    assert outcome["holds"] == 1, outcome
    assert outcome["manifest_rows"] == 1, outcome
    assert outcome["hold_took"] < 1.0, f"the hold waited {outcome['hold_took']:.1f} s for an upload"


# --- 6. The admin's hold on a task whose result is being deleted reports nothing of it ---------------


@pytest.mark.django_db(transaction=True)
def test_the_admin_hold_on_a_task_whose_result_files_are_being_deleted_says_some_are_still_deleted(
    admin_client: Any, make_task: Any, storage_gate: Any
) -> None:
    from django.urls import reverse

    from retention.deletion import results

    # given a task whose result TTL passed, with two result files, and a result purge in the middle
    # of its storage call (the keys are decided; the call cannot be taken back)
    now = timezone.now()
    task = make_task(
        "t.case", result={"a": 1}, result_expires_at=now - timedelta(minutes=1),
        files={"out/a.txt": b"a", "out/b.txt": b"b"},
    )  # fmt: skip
    gate = storage_gate()
    purger = in_thread(lambda: results.purge_results([task.pk], now=now))
    gate.wait_for(1)

    # when the operator places a legal hold on it from the admin
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "court"},
        follow=True,
    )
    gate.go.set()
    purger.join(timeout=60)

    # then the two files already handed to storage are deleted after the hold (audited as a partial
    # purge), and the operator, under a legal obligation, was told so, as for a task being purged
    records = list(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted"))
    assert records == [("partial_purge", 2)]
    message = response.content.decode()
    assert "Placed 1 legal hold" in message
    assert "partial purge" in message, "the admin reported a plain success; two held files were deleted after it"


# --- 7. Writes made with session_replication_role = replica skip the fence's triggers ---------------
# (a logical-replication subscriber applying holds or policies from a compliance database, or any
# SQL session that sets it: ordinary triggers do not fire then.)


@pytest.mark.django_db(transaction=True)
def test_a_policy_disabled_from_a_replica_role_session_still_stops_claims_under_it(
    make_task: Any, no_default_policy: None
) -> None:
    from retention.audit import records as audit
    from retention.models import RetentionPolicy
    from retention.rules import policies

    # given a task claimed under a one-day policy, with its file
    now = timezone.now()
    policy = RetentionPolicy.objects.create(task_type="t.repl", keep_for=timedelta(days=1))
    task = make_task("t.repl", finished_at=now - timedelta(days=3), files={"out/a.txt": b"a"})
    reason = audit.policy_claim(audit.age_reason(policy.pk), policies.version())
    claims.claim(Task.objects.filter(pk=task.pk), reason=reason, now=now, limit=1)

    # when the policy is disabled by SQL in a session with session_replication_role = replica
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute("UPDATE retention_retentionpolicy SET enabled = false WHERE id = %s", [policy.pk])

    # then the purge sees the edit (the version changed) and gives the claim back: nothing deleted
    counts = purge.purge_claimed([task.pk], now=now)
    assert counts.purged == 0, "the task was purged under a policy that had been disabled"
    assert Task.objects.get(pk=task.pk).status == TaskStatus.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_a_hold_written_from_a_replica_role_session_waits_for_the_decision_under_way(
    make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a claimed task whose purge is in its final deciding transaction (audit, tombstone)
    now = timezone.now()
    task = make_task("t.case", expires_at=now, payload={"secret": "kept"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    closing, go = threading.Event(), threading.Event()
    real_close = purge._close

    def paused_close(*args: Any, **kwargs: Any) -> Any:
        closing.set()
        assert go.wait(timeout=60)
        return real_close(*args, **kwargs)

    monkeypatch.setattr(purge, "_close", paused_close)
    purger = in_thread(lambda: purge.purge_claimed([task.pk], now=now))
    assert closing.wait(timeout=30)

    # when a hold covering it is inserted by SQL from a session with session_replication_role = replica
    release = threading.Timer(2.0, go.set)
    release.start()
    started = time.monotonic()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(
            "INSERT INTO retention_legalhold (task_type, reason, created_at) VALUES (%s, %s, now())",
            ["t.case", "replicated"],
        )
    took = time.monotonic() - started
    go.set()
    release.cancel()
    purger.join(timeout=60)

    # then either the hold waited for the decision under way, or the decision saw it
    tombstoned = Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    assert took >= 1.5 or not tombstoned, (
        f"the hold committed after {took:.2f} s without waiting, and the task was tombstoned under it"
    )


# --- 8. A listed key PostgreSQL cannot store stops the orphan sweep for good ------------------------


@pytest.mark.django_db(transaction=True)
def test_a_key_the_database_cannot_store_does_not_stop_the_orphan_sweep_forever(
    settings: Any, s3_client: Any, empty_bucket: None, bucket_keys: Any, make_task: Any
) -> None:
    from django.core.files.storage import default_storage

    # given, under tasks/, an object whose key holds a NUL byte (S3 accepts it; PostgreSQL text
    # cannot hold it; written by any other tool with access to the bucket), and after it in
    # listing order an ordinary orphan: a late object of a tombstone (an object of a task that does
    # not exist at all waits orphans.MISSING_TASK_GRACE, whatever the grace setting)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    bucket = default_storage.bucket_name
    s3_client.put_object(Bucket=bucket, Key="tasks/0-odd\x00name", Body=b"x")
    tombstone = make_task(status=TaskStatus.EXPIRED, final_status=TaskStatus.SUCCEEDED)
    orphan = f"tasks/{tombstone.pk}/out/a.txt"
    s3_client.put_object(Bucket=bucket, Key=orphan, Body=b"x")

    # when the orphan sweep runs (twice, as beat would)
    failures = []
    try:
        for _ in range(2):
            try:
                sweeps.sweep_orphans(timezone.now())
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))
    finally:
        # DeleteObjects cannot carry a NUL in its XML body: remove the odd key by itself, so the
        # other tests' empty_bucket fixture still works
        s3_client.delete_object(Bucket=bucket, Key="tasks/0-odd\x00name")

    # then the sweep goes past the odd key (reporting it) and deletes the real orphan
    assert orphan not in bucket_keys("tasks/"), f"the orphan sweep is stuck on one key: {failures}"


# --- 9. The admin's hold on a task whose purge is finishing reports data kept that is gone ----------


@pytest.mark.django_db(transaction=True)
def test_the_admin_hold_that_waited_for_a_finishing_purge_does_not_report_the_data_kept(
    admin_client: Any, make_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.urls import reverse

    # given a task being purged whose last deciding transaction (audit + tombstone) is under way
    now = timezone.now()
    task = make_task("t.case", expires_at=now, payload={"secret": "x"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)
    closing, go = threading.Event(), threading.Event()
    real_close = purge._close

    def paused_close(*args: Any, **kwargs: Any) -> Any:
        closing.set()
        assert go.wait(timeout=60)
        return real_close(*args, **kwargs)

    monkeypatch.setattr(purge, "_close", paused_close)
    purger = in_thread(lambda: purge.purge_claimed([task.pk], now=now))
    assert closing.wait(timeout=30)

    # when the operator places a legal hold on it from the admin (the hold waits for that
    # transaction, as the fence promises, and commits after the task was tombstoned)
    release = threading.Timer(1.0, go.set)
    release.start()
    response = admin_client.post(
        reverse("admin:tasks_app_task_changelist"),
        {"_selected_action": [str(task.pk)], "action": "place_legal_hold_action", "confirm": "yes", "reason": "court"},
        follow=True,
    )
    release.cancel()
    go.set()
    purger.join(timeout=60)

    # then the task's data is gone, and the operator is not told the hold stopped its purge
    assert Task.objects.get(pk=task.pk).status == TaskStatus.EXPIRED
    message = response.content.decode()
    assert "the hold stops their purge" not in message, "the admin says the purge was stopped; it had finished"


# --- 10. Orphan sweep racing a purge: objects the purge deleted and audited are audited again --------


@pytest.mark.django_db(transaction=True)
def test_an_orphan_sweep_racing_a_purge_does_not_audit_the_purged_objects_again(
    make_task: Any, monkeypatch: pytest.MonkeyPatch, settings: Any, empty_bucket: None
) -> None:
    from retention.orphans import listing as orphans

    # given a task claimed for purging with two files (with the default grace of an hour, any
    # expired task's files are old enough to be orphan candidates; here the grace is 0)
    settings.RETENTION_ORPHAN_GRACE = timedelta(0)
    now = timezone.now()
    task = make_task("t.case", expires_at=now, files={"out/a.txt": b"a", "out/b.txt": b"bb"})
    claims.claim(Task.objects.filter(pk=task.pk), reason="expires_at", now=now, limit=1)

    # when an orphan sweep lists a page with the task's objects (the task is live: no orphan yet),
    # and the task's purge deletes them, audits them and tombstones the task before the sweep decides
    listed, purged = threading.Event(), threading.Event()
    real_list = orphans.objects.list_objects

    def list_then_wait(*args: Any, **kwargs: Any) -> Any:
        page = real_list(*args, **kwargs)
        if page and not listed.is_set():
            listed.set()
            assert purged.wait(timeout=60)
        return page

    monkeypatch.setattr(orphans.objects, "list_objects", list_then_wait)
    out: dict[str, Any] = {}
    sweeper = in_thread(lambda: sweeps.sweep_orphans(timezone.now()), out, "sweep")
    assert listed.wait(timeout=30)
    assert purge.purge_claimed([task.pk], now=now).purged == 1
    purged.set()
    sweeper.join(timeout=60)

    # then the two objects are audited once, by the purge that deleted them: the orphan sweep found
    # nothing left to delete and must not claim it deleted (and freed the bytes of) them again
    records = sorted(AuditRecord.objects.filter(task_id=task.pk).values_list("action", "objects_deleted"))
    assert records == [("task_purged", 2)], records
