"""Verification ahead of the load: staged runs verified on worker threads, handed over in order.

Hashing and Parquet decoding release the GIL, so runs verify in parallel with each other and
with the merge of the batch before them. How many threads, and whether small runs go in chunks
to one thread, depends on whether the staging area's reads are page-cache reads (a local
root) or round trips (an object store): ``StagingArea.latency_bound``.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from lakehouse.areas import StagingArea
from lakehouse.config import LakeConfig
from lakehouse.errors import RunRejectedError
from lakehouse.staged import RunRef, VerifiedRun, verify_run

# Local runs are read from the page cache and hashed: as many threads as cores help.
VERIFY_THREADS = max(2, min(8, os.cpu_count() or 2))
# An object store is round trips: more requests in flight hide their latency.
REMOTE_THREADS = 16
CHUNK_BYTES = 4 << 20  # runs verified per task: about this many staged bytes ...
MAX_CHUNK_RUNS = 64  # ... and at most this many runs
SMALL_RUN_BYTES = 256 << 10  # runs smaller than this verify on one thread, in chunks ...
SMALL_AHEAD_CHUNKS = 8  # ... at most this many chunks ahead (32 MiB of staged files)


def verify_from(area: StagingArea, refs: list[RunRef], config: LakeConfig
                ) -> Iterator[tuple[RunRef, VerifiedRun | RunRejectedError]]:
    """Verify ``refs`` ahead of the caller, as suits ``area`` (:func:`verify_ahead`)."""
    remote = area.latency_bound
    return verify_ahead(refs, config, REMOTE_THREADS if remote else VERIFY_THREADS,
                        local=not remote)


def verify_ahead(refs: list[RunRef], config: LakeConfig, threads: int = VERIFY_THREADS,
                 local: bool = True) -> Iterator[tuple[RunRef, VerifiedRun | RunRejectedError]]:
    """Verify runs on a few threads, yielding them in order, a bounded number of bytes ahead.

    Small runs are mostly Python (paths, the manifest, a tiny decode): handed over one per
    task they cost twice as much as verified in line (measured: 100-row runs 0.45 ms each on
    a pool against 0.22 ms serially), and two threads verifying them contend for the GIL. So
    they go in chunks of about ``CHUNK_BYTES`` to one thread that works through up to
    ``SMALL_AHEAD_CHUNKS`` chunks while the main thread validates and merges a batch. In an
    object store (``local`` false) every run is its own task: there the time is round trips,
    hidden by many requests in flight. The look-ahead is bounded so the backlog is never held
    in memory.
    """
    def verify(chunk: list[RunRef]) -> list[VerifiedRun | RunRejectedError]:
        done: list[VerifiedRun | RunRejectedError] = []
        for ref in chunk:
            try:
                done.append(verify_run(ref, config))
            except RunRejectedError as exc:
                done.append(exc)
        return done

    run_bytes = CHUNK_BYTES  # running estimate of a run's size; the first chunk is one run
    with ThreadPoolExecutor(max_workers=threads) as pool, \
            ThreadPoolExecutor(max_workers=1) as lane:
        pending: deque[tuple[list[RunRef], Future[list[VerifiedRun | RunRejectedError]]]] = \
            deque()
        start = 0

        def refill() -> None:
            nonlocal start
            small = local and run_bytes < SMALL_RUN_BYTES
            while start < len(refs) and len(pending) < (
                    SMALL_AHEAD_CHUNKS if small else threads * 2):
                size = max(1, min(MAX_CHUNK_RUNS, CHUNK_BYTES // max(run_bytes, 1))) \
                    if local else 1
                chunk = refs[start:start + size]
                start += size
                pending.append((chunk, (lane if small else pool).submit(verify, chunk)))

        refill()
        while pending:
            chunk, future = pending.popleft()
            results = future.result()
            sizes = [r.manifest.bytes for r in results if isinstance(r, VerifiedRun)]
            if sizes:
                run_bytes = (run_bytes + sum(sizes) // len(sizes)) // 2
            refill()
            yield from zip(chunk, results, strict=True)


__all__ = ["verify_ahead", "verify_from"]
