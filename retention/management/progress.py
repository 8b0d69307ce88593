"""A progress bar on a terminal, nothing otherwise (pipes, cron, CI logs stay quiet)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import OutputWrapper
from tqdm import tqdm


@contextmanager
def progress_bar(stdout: OutputWrapper, description: str) -> Iterator[Any]:
    """Yield a tqdm bar, disabled unless stdout is a TTY; ``bar.update(n)`` counts items done."""
    with tqdm(desc=description, unit="item", disable=not stdout.isatty(), file=sys.stdout, leave=False) as bar:
        yield bar
