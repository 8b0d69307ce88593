"""Read and validate environment variables, naming the variable in every error."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, Literal, overload

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def _fail(name: str, value: str, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"Environment variable {name}={value!r} is malformed: expected {expected}.")


def is_unset(name: str) -> bool:
    """Return whether the variable is absent from the environment (an empty value counts as set)."""
    return name not in os.environ


def read_str(name: str, default: str) -> str:
    """Return the variable as a string, or the default when unset."""
    value = _raw(name)
    return default if value is None else value


def read_bool(name: str, default: bool) -> bool:
    """Return the variable as a boolean (1/0, true/false, yes/no, on/off)."""
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _fail(name, value, "a boolean such as true or false")


def read_list(name: str, default: list[str]) -> list[str]:
    """Return a comma-separated variable as a list of non-empty items."""
    value = _raw(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def read_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return the variable as an integer, within ``minimum`` and ``maximum`` when given."""
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _fail(name, value, "an integer") from None
    if minimum is not None and number < minimum:
        raise _fail(name, value, f"an integer of at least {minimum}")
    if maximum is not None and number > maximum:
        raise _fail(name, value, f"an integer of at most {maximum}")
    return number


def read_rate(name: str, default: str) -> str | None:
    """Return a DRF throttle rate such as "60/minute"; empty means no limit."""
    value = read_str(name, default)
    if not value:
        return None
    count, _, period = value.partition("/")
    if not count.isdigit() or period[:1] not in {"s", "m", "h", "d"}:
        raise _fail(name, value, "a rate such as 60/minute (per second, minute, hour or day), or empty")
    return value


MAX_SECONDS = 100 * 365 * 86400  # the longest duration a setting may give, in seconds


@overload
def read_seconds(
    name: str, default: timedelta, *, allow_zero: bool = True, empty_means_none: Literal[False] = False
) -> timedelta: ...


@overload
def read_seconds(
    name: str, default: timedelta | None, *, allow_zero: bool = True, empty_means_none: bool = False
) -> timedelta | None: ...


def read_seconds(
    name: str,
    default: timedelta | None,
    *,
    allow_zero: bool = True,
    empty_means_none: bool = False,
) -> timedelta | None:
    """Return a duration given in (possibly fractional) seconds as a timedelta.

    An empty value means "none" (no limit) only where ``empty_means_none`` is set.
    """
    value = _raw(name)
    if value is None:
        return default
    if value == "":
        if empty_means_none:
            return None
        raise _fail(name, value, "a number of seconds")
    try:
        seconds = float(value)
    except ValueError:
        raise _fail(name, value, "a number of seconds") from None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise _fail(name, value, "a finite number of seconds")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        expected = "a non-negative number of seconds" if allow_zero else "a positive number of seconds"
        raise _fail(name, value, expected)
    if seconds > MAX_SECONDS:
        # Every duration is added to the current time somewhere; beyond this it no longer fits a date.
        raise _fail(name, value, f"at most {MAX_SECONDS:.0f} seconds (100 years)")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise _fail(name, value, "a number of seconds that fits a duration") from None


def read_database(name: str, default: str) -> dict[str, Any]:
    """Return a Django DATABASES entry parsed from a database URL."""
    value = _raw(name) or default
    scheme = value.split("://", 1)[0] if "://" in value else ""
    # The password is never echoed: configuration errors end up in logs.
    if scheme not in environ.Env.DB_SCHEMES:
        raise _fail(name, _masked(value), "a database URL such as postgres://user:pass@host:5432/db or sqlite:///path")
    try:
        config = environ.Env.db_url_config(value)
    except Exception as exc:  # django-environ raises several types for bad URLs
        raise _fail(name, _masked(value), f"a database URL ({str(exc).replace(value, _masked(value))})") from None
    return config


def read_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """Return the variable if it is one of ``choices`` (compared lower-case); empty means the default."""
    value = _raw(name)
    if not value:
        return default
    if value.lower() not in choices:
        raise _fail(name, value, "one of " + ", ".join(choices))
    return value.lower()


def read_http_url(name: str, default: str | None) -> str | None:
    """Return an http(s) URL with a host (an S3 endpoint); empty means the default."""
    from urllib.parse import urlsplit

    value = _raw(name)
    if not value:
        return default
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise _fail(name, value, "an http(s) URL such as https://s3.example.com") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _fail(name, value, "an http(s) URL such as https://s3.example.com")
    return value


_REDIS_SCHEMES = ("redis", "rediss", "sentinel", "sentinels")


def _masked(url: str) -> str:
    """The URL with its password hidden (error messages end up in logs)."""
    import re

    return re.sub(r"(://[^:/@;]*:)[^;]*@", r"\1**@", url)


def read_broker_url(name: str, default: str) -> str:
    """Return a kombu broker URL, each ``;``-separated alternative checked; the password is never echoed.

    Redis URLs may carry a password and any database number (``redis://:secret@host:6379/3``);
    ``sentinel://host:26379;sentinel://other:26379`` lists Sentinels (the master's name is a
    transport option).
    """
    from kombu.transport import TRANSPORT_ALIASES
    from kombu.utils.url import parse_url

    value = _raw(name) or default
    expected = "a broker URL such as redis://:password@127.0.0.1:6379/0, sentinel://host:26379 or filesystem://"
    schemes = set()
    for part in value.split(";"):
        scheme = part.split("://", 1)[0] if "://" in part else ""
        if scheme not in TRANSPORT_ALIASES:
            raise ImproperlyConfigured(
                f"Environment variable {name}={_masked(value)!r} is malformed: expected {expected}."
            )
        schemes.add(scheme)
        if scheme not in _REDIS_SCHEMES:
            continue
        try:
            parts = parse_url(part)
        except Exception:  # kombu raises ValueError (bad port) and others for bad URLs
            raise ImproperlyConfigured(
                f"Environment variable {name}={_masked(value)!r} is malformed: expected {expected}."
            ) from None
        database = (parts.get("virtual_host") or "0").strip("/") or "0"
        if not parts.get("hostname") or not database.isdigit():
            raise ImproperlyConfigured(
                f"Environment variable {name}={_masked(value)!r} is malformed: expected {expected} "
                "(a host, and a database number after the last /)."
            )
    if len(schemes) > 1:
        raise ImproperlyConfigured(
            f"Environment variable {name}={_masked(value)!r} is malformed: every ';'-separated URL must use one scheme."
        )
    return value
