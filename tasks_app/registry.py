"""Registry of task types: ``@task_type("ocr.page", max_attempts=3, timeout=...)``."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.utils.module_loading import autodiscover_modules

logger = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Any]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT = timedelta(minutes=5)


@dataclass(frozen=True)
class TaskType:
    """A registered handler and its execution limits."""

    name: str
    handler: Handler
    max_attempts: int
    timeout: timedelta


_registry: dict[str, TaskType] = {}


def task_type(
    name: str,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of task type ``name``."""
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"task type name must be a non-empty string of at most 200 characters: {name!r}")
    if not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts of {name!r} must be a positive integer, got {max_attempts!r}")
    if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
        raise ValueError(f"timeout of {name!r} must be a positive timedelta, got {timeout!r}")

    def decorator(func: Handler) -> Handler:
        existing = _registry.get(name)
        if existing is not None and existing.handler is not func:
            same_origin = (existing.handler.__module__, existing.handler.__qualname__) == (
                func.__module__,
                func.__qualname__,
            )
            if not same_origin:
                raise ValueError(
                    f"task type {name!r} is already registered by "
                    f"{existing.handler.__module__}.{existing.handler.__qualname__}"
                )
        _registry[name] = TaskType(name=name, handler=func, max_attempts=max_attempts, timeout=timeout)
        return func

    return decorator


def get(name: str) -> TaskType | None:
    """Return the registered task type, or None."""
    return _registry.get(name)


def names() -> list[str]:
    """Return every registered task type name, sorted."""
    return sorted(_registry)


def unregister(name: str) -> None:
    """Forget a task type (tests register throwaway types)."""
    _registry.pop(name, None)


def load(modules: list[str]) -> None:
    """Import every installed app's ``handlers`` module, then the modules named in ``modules``."""
    autodiscover_modules("handlers")
    for module in modules:
        importlib.import_module(module)
    logger.debug("task types loaded", extra={"task_types": names()})
