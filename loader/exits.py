"""Exit codes: the one place that turns an outcome into the number `lake` exits with.

From DESIGN.md: 0 done; 2 usage or config error; 3 done, but something was rejected; 75 busy
(lock held, or stopped by a signal at a safe point: retry on the next tick); 1 unexpected
error. Never negative. Errors go to stderr as one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from lakehouse.errors import (
    ConfigError,
    LakehouseError,
    LoadAbortedError,
    LockHeldError,
    PartitionValueError,
    RepartitionRefusedError,
    StopRequestedError,
    UsageError,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REJECTED, EXIT_BUSY = 0, 1, 2, 3, 75


def exit_code_for(exc: BaseException) -> int:
    """The exit code DESIGN.md gives an error."""
    if isinstance(exc, LockHeldError | StopRequestedError):
        return EXIT_BUSY
    if isinstance(exc, ConfigError | UsageError):
        return EXIT_USAGE
    if isinstance(exc, LoadAbortedError | PartitionValueError | RepartitionRefusedError):
        return EXIT_REJECTED
    return EXIT_ERROR


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Print a one-line error to stderr and exit with the mapped code."""
    try:
        yield
    except LakehouseError as exc:
        click.echo(f"lake: {exc}", err=True)
        raise click.exceptions.Exit(exit_code_for(exc)) from None
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"lake: {exc.strerror or exc}{where} (check the path, free disk space and "
                   "permissions, then run the command again)", err=True)
        raise click.exceptions.Exit(EXIT_ERROR) from None
