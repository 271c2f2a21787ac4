"""Demo producers for `make demo`: several processes stage runs of `events` and `readings`.

Each producer stages deterministic data under idempotency keys (``demo-<producer>-<n>``), so
running the demo twice stages the same runs again and the loader records the repeats as
skipped instead of loading them twice. One run per demo is deliberately invalid, to show
quarantine at work.

Usage: ``python -m staging.demo --root data --producers 4``
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from staging.writer import stage_run

START = datetime(2026, 10, 1, tzinfo=UTC).replace(tzinfo=None)
KINDS = ["view", "click", "purchase"]


def events_table(producer: int, batch: int, rows: int = 500) -> pa.Table:
    """Web events; later batches revise some earlier events (an upsert at work)."""
    rng = random.Random(producer * 1000 + batch)
    base = producer * 1_000_000 + batch * rows
    ids = [base + i for i in range(rows)]
    if batch:  # revise a tenth of the previous batch's events
        ids[: rows // 10] = [base - rows + i for i in range(rows // 10)]
    ts = [START + timedelta(minutes=rng.randrange(0, 60 * 24 * 75)) for _ in ids]
    kinds = [rng.choice(KINDS) for _ in ids]
    amount = [round(rng.uniform(1, 200), 2) if k == "purchase" else None for k in kinds]
    return pa.table({"event_id": ids, "ts": ts, "user_id": [i % 997 for i in ids],
                     "kind": kinds, "amount": pa.array(amount, pa.float64())})


def readings_table(producer: int, batch: int, rows: int = 200, bad_rows: int = 0) -> pa.Table:
    """Sensor readings, one per sensor and minute; ``bad_rows`` implausible temperatures."""
    rng = random.Random(-(producer * 1000 + batch))
    ts = [START + timedelta(days=batch, minutes=i) for i in range(rows)]
    celsius = [round(rng.gauss(18, 6), 2) for _ in range(rows)]
    for i in range(bad_rows):
        celsius[i] = 999.0
    return pa.table({"sensor": [f"s-{producer}"] * rows, "ts": ts, "celsius": celsius})


def produce(root: str, producer: int, batches: int) -> None:
    """One producer process: stage ``batches`` runs of each table."""
    name = f"demo-{producer}"
    for batch in range(batches):
        with stage_run(root, "events", producer=name, key=f"{name}-events-{batch}") as run:
            run.write(events_table(producer, batch))
        bad = 3 if (producer == 0 and batch == 1) else 0
        with stage_run(root, "readings", producer=name, key=f"{name}-readings-{batch}") as run:
            run.write(readings_table(producer, batch, bad_rows=bad))
    if producer == 0:
        # A run that breaks the events contract (an unknown kind): it goes to quarantine.
        broken = events_table(producer, 99, rows=5).set_column(
            3, "kind", pa.array(["refund"] * 5))
        with stage_run(root, "events", producer=name, key=f"{name}-events-broken") as run:
            run.write(broken)


def main(argv: list[str] | None = None) -> int:
    """Start the producer processes at once and wait for them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data")
    parser.add_argument("--producers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        produce(args.root, args.worker, args.batches)
        return 0
    procs = [subprocess.Popen([sys.executable, "-m", "staging.demo", "--root", args.root,
                               "--batches", str(args.batches), "--worker", str(i)])
             for i in range(args.producers)]
    codes = [p.wait() for p in procs]
    print(f"{args.producers} producers staged {args.batches} runs of events and readings each"
          + ("" if not any(codes) else f"; exit codes {codes}"))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
