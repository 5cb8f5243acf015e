"""Summarise `py-spy record --format raw` output: where the server's CPU goes, by component.

    .venv/bin/python bench/http_ingest.py --profile /tmp/prof   # records the ingest phase
    .venv/bin/python bench/pyspy_summary.py /tmp/prof/ingest-*.txt

Each sample is put in the first bucket whose pattern occurs in its stack (most specific
buckets first), so the shares add up to 100 %. Record with `--gil` (http_ingest.py does) so
that only the thread holding the GIL is sampled: in a GIL-bound server that is the CPU.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

# (bucket, substrings of a frame; the first bucket with a match in the stack wins)
BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    ("device-token lookup on a cache miss (DB session)", ("identify_device",)),
    ("rate limiter (limits, moving window)", ("limits/",)),
    (
        "thread-pool hops (sync dependency, to_thread)",
        ("run_in_threadpool", "anyio/to_thread", "WorkerThread", "concurrent/futures", "to_thread"),
    ),
    ("batch writer (SQLAlchemy + asyncpg)", ("BatchWriter", "writer.py")),
    ("access log", ("logging/", "uvicorn/logging")),
    ("Prometheus metrics", ("prometheus_client",)),
    ("telemetry parsing and validation", ("protocol/telemetry", "protocol/_json")),
    ("SQLAlchemy / asyncpg (other; greenlet stacks are cut short)", ("sqlalchemy/", "asyncpg/")),
    ("FastAPI / Starlette (routing, dependencies, middleware)", ("fastapi/", "starlette/")),
    ("uvicorn HTTP protocol", ("uvicorn/protocols",)),
    ("event loop and other", ("",)),
]


def summarise(paths: list[Path]) -> list[tuple[str, int, float]]:
    counts: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if not number.isdigit():
                continue
            samples = int(number)
            total += samples
            for name, patterns in BUCKETS:
                if any(p in stack for p in patterns):
                    counts[name] += samples
                    break
    return [(name, counts[name], 100 * counts[name] / max(total, 1)) for name, _ in BUCKETS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("files", nargs="+", type=Path, help="py-spy raw output files")
    args = parser.parse_args(argv)
    rows = summarise(args.files)
    total = sum(n for _, n, _ in rows)
    print(f"{total} samples")
    print("| component | share of server CPU |")
    print("|---|---:|")
    for name, _, share in sorted(rows, key=lambda r: -r[1]):
        print(f"| {name} | {share:.1f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
