"""A producer process for crash tests: stages runs of several large-ish files in a loop.

Run as ``python tests/producer_proc.py ROOT [--table T] [--files N] [--rows N] [--runs N]
[--seed S]``. It prints ``ready`` once its imports are done, then ``committed <run_id>`` after
each run commits, and stages until ``--runs`` runs are done (0 = forever) or it is killed.
The data is random and barely compressible, so each write takes a noticeable time and a
SIGKILL lands inside a write, between writes, or around the manifest.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa

from staging import stage_run


def make_table(rng: np.random.Generator, run: int, part: int, rows: int) -> pa.Table:
    """One data file: an id column, random floats and short random strings."""
    base = (run * 1000 + part) * rows
    return pa.table({
        "id": pa.array(np.arange(base, base + rows, dtype=np.int64)),
        "run": pa.array(np.full(rows, run, dtype=np.int32)),
        "x": pa.array(rng.random(rows)),
        "y": pa.array(rng.standard_normal(rows)),
        "tag": pa.array(rng.integers(0, 1 << 62, rows).astype(str)),
    })


def main(argv: list[str] | None = None) -> int:
    """Stage runs until told how many, or until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--table", default="plain")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--producer", default="crashy")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    print("ready", flush=True)
    run = 0
    while args.runs == 0 or run < args.runs:
        with stage_run(args.root, args.table, producer=args.producer,
                       key=f"{args.producer}-{args.seed}-{run}") as staged:
            for part in range(args.files):
                staged.write(make_table(rng, run, part, args.rows))
        print(f"committed {staged.run_id}", flush=True)
        run += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
