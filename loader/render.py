"""Text for people: how the CLI draws a report (tables, sizes, ages) when not asked for JSON."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.audit import AuditReport


def draw_table(headers: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns under their headers, one line each, indented under a
    section title; a missing value (None) shows as "-", and no rows as "(none)"."""
    if not rows:
        return [f"{indent}(none)"]
    cells = [headers, *[["-" if v is None else str(v) for v in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in cells]


def mebibytes(n: int | None) -> str:
    """A file's size in MiB ("missing" when there is no file)."""
    return "missing" if n is None else f"{n / 2**20:.1f} MiB"


def hours(value: float | None) -> str:
    """An age in hours ("-" when unknown)."""
    return "-" if value is None else f"{value:.1f} h"


def render_audit(report: AuditReport) -> str:
    """`lake audit`'s text report: warehouse, tables, staging, quarantine, problems."""
    p, s = report.payload, report.payload["summary"]
    wh, snap, db = p["warehouse"], p["warehouse"]["snapshot"], p["warehouse"]["database"]
    blocks = (f"{db['free_blocks']}/{db['total_blocks']} blocks free ({db['free_ratio']:.0%})"
              if db else "blocks unknown")
    st = p["staging"]
    waiting = [f"{title} {st[k]['count']} (oldest {hours(st[k]['oldest_age_hours'])})"
               for k, title in (("committed", "committed runs waiting:"),
                                ("uncommitted", "uncommitted runs:"),
                                ("temp_files", "temp files:"))]
    staged_in = f" (staging in {p['staging_root']})" if p["staging_root"] else ""
    return "\n".join([
        f"Lake audit of {p['root']}{staged_in} at {p['generated_at']}: {s['error']} error(s), "
        f"{s['warn']} warning(s), {s['info']} info",
        "warehouse:", f"  {wh['path']} {mebibytes(wh['size_bytes'])}; {snap['path']} "
        f"{mebibytes(snap['size_bytes'])}, published {hours(snap['age_hours'])} ago; {blocks}; "
        f"schema v{wh['schema_version']}",
        "tables:", *draw_table(["table", "rows", "partitions", "min", "max", "watermark",
                                "since load", "dup keys"],
                               [[n, t["rows"], t["partition_count"], t["partition_min"],
                                 t["partition_max"], t["watermark"], hours(t["hours_since_load"]),
                                 t["duplicate_keys"]] for n, t in p["tables"].items()]),
        "staging:", *[f"  {line}" for line in waiting],
        "quarantine:", *draw_table(["table", "runs", "oldest run", "reasons"],
                                   [[n, q["runs"], q["oldest_run_id"], json.dumps(q["reasons"])]
                                    for n, q in p["quarantine"]["tables"].items()]),
        "problems:", *draw_table(["severity", "code", "message", "fix"],
                                 [[x["severity"], x["code"], x["message"], x["fix"]]
                                  for x in p["problems"]])])


__all__ = ["draw_table", "hours", "mebibytes", "render_audit"]
