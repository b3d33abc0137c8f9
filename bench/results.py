"""The rows bench/lib.sh's `measure` prints, one run a line: the variant's
name first, then req/s, requests, p99, non-2xx, the server's and Envoy's CPU
ticks, then whatever the script appended. Imported by the scripts' summaries
(`sys.path.insert(0, "bench")`: they run from the repository's root)."""

import statistics


def by_variant(path):
    """Each variant's rows, in the order they ran."""
    by = {}
    for line in open(path):
        row = line.split()
        if row:
            by.setdefault(row[0], []).append(row)
    return by


def median(rows, column):
    return statistics.median(float(r[column]) for r in rows)


def per_request_us(rows, ticks_column, tick):
    """Median CPU µs per request of the process whose ticks are in that column."""
    return statistics.median(float(r[ticks_column]) / tick / float(r[2]) * 1e6 for r in rows)
