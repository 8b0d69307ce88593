"""Typed, lazily read settings of retention with documented defaults.

Each reads a Django setting of the same name when the project defines one (this project
validates them from the environment in project.settings), else the default below, so the
app installs into another Django project without copying those settings."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings


def batch_size() -> int:
    """Tasks claimed per purge batch, and storage keys listed per orphan page (RETENTION_BATCH_SIZE)."""
    return getattr(settings, "RETENTION_BATCH_SIZE", 500)


def result_batch_size() -> int:
    """Results without files purged per statement by the results sweep (RETENTION_RESULT_BATCH_SIZE).

    Larger than RETENTION_BATCH_SIZE: such a batch is one statement and no storage call, so its
    transaction stays short (~50 ms for 5,000 on two cores, ~100 ms when they are busy) while the
    fixed cost of a batch (fence lock, planning, commit) is spread ten times wider.
    """
    return getattr(settings, "RETENTION_RESULT_BATCH_SIZE", 5000)


def sweep_batches() -> int:
    """Batches one sweep invocation handles before it re-enqueues itself (RETENTION_SWEEP_BATCHES)."""
    return getattr(settings, "RETENTION_SWEEP_BATCHES", 20)


def orphan_grace() -> timedelta:
    """Age before an unowned object under tasks/ is deleted (RETENTION_ORPHAN_GRACE, seconds; 0 = none)."""
    return getattr(settings, "RETENTION_ORPHAN_GRACE", timedelta(hours=1))


def lag_alert() -> timedelta:
    """Retention lag above which monitoring alerts (RETENTION_LAG_ALERT, seconds)."""
    return getattr(settings, "RETENTION_LAG_ALERT", timedelta(hours=1))


def claim_timeout() -> timedelta:
    """Age after which a purge claim is taken over by the next tasks sweep (RETENTION_CLAIM_TIMEOUT, seconds)."""
    return getattr(settings, "RETENTION_CLAIM_TIMEOUT", timedelta(minutes=5))


# The key id of the seal key derived from SECRET_KEY when RETENTION_SEAL_KEY is not set.
DERIVED_SEAL_KEY_ID = "secret-key"


def seal_keys() -> tuple[str, dict[str, bytes]]:
    """The key id that signs new audit seals, and every key id → secret that verifies them.

    RETENTION_SEAL_KEY is ``KEY_ID:SECRET``; RETENTION_SEAL_PREVIOUS_KEYS lists the keys retired
    by rotation (same form), kept so older seals still verify. Without RETENTION_SEAL_KEY the key is
    derived from SECRET_KEY (id ``secret-key``): rotating SECRET_KEY then needs the old derived key
    kept as a previous key, so production sets RETENTION_SEAL_KEY.
    """
    import hashlib
    import hmac

    from retention.audit.chain import parse_keys

    current = getattr(settings, "RETENTION_SEAL_KEY", "")
    keys = parse_keys(getattr(settings, "RETENTION_SEAL_PREVIOUS_KEYS", []))
    if current:
        ((key_id, secret),) = parse_keys([current]).items()
    else:
        key_id = DERIVED_SEAL_KEY_ID
        secret = hmac.new(settings.SECRET_KEY.encode(), b"retention-audit-seal", hashlib.sha256).hexdigest().encode()
    keys[key_id] = secret
    return key_id, keys


def seal_interval() -> timedelta:
    """How often beat seals the audit trail (RETENTION_SEAL_INTERVAL, seconds); also sealed at each run's end."""
    return getattr(settings, "RETENTION_SEAL_INTERVAL", timedelta(seconds=60))


def seal_lock_mode() -> str:
    """Object Lock mode of the seals' copies in the bucket (RETENTION_SEAL_LOCK_MODE: COMPLIANCE or GOVERNANCE)."""
    return getattr(settings, "RETENTION_SEAL_LOCK_MODE", "COMPLIANCE")


def seal_lock_for() -> timedelta:
    """How long each seal's copy is locked in the bucket (RETENTION_SEAL_LOCK_FOR, seconds; default 7 years)."""
    return getattr(settings, "RETENTION_SEAL_LOCK_FOR", timedelta(days=7 * 365))
