"""`lake export TABLE --to DIR_OR_URL`: a thin command over :func:`lakehouse.export.export_table`.

``loader/cli.py`` imports this module at its end to register the command, and ``python -m
loader.cli`` runs that file as ``__main__``: so this module must not import ``loader.cli``
while it is being imported (that would load a second copy of cli.py, which imports this
half-initialised module). The shared helpers are imported when the command runs, and the two
shared options are declared here with the same names, types and help as in cli.py.
"""

from __future__ import annotations

from typing import Any

import click


@click.command("export")
@click.argument("table")
@click.option("--to", "to", required=True, metavar="DIR_OR_URL",
              help="Target folder or fsspec URL (s3://bucket/exports); the table goes to "
                   "<to>/<table>/.")
@click.option("--full", is_flag=True, help="Rewrite every partition, changed or not.")
@click.option("--dry-run", is_flag=True,
              help="Say which partitions would be written, carried over or removed; write "
                   "nothing (reads the published snapshot, takes no lock).")
@click.option("--keep-versions", type=click.IntRange(min=1), default=2, show_default=True,
              help="Export versions to keep under <to>/<table>/_v/ (the current one included).")
@click.option("--lock-timeout", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds to wait for a busy warehouse before exiting 75.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def export_command(obj: Any, table: str, to: str, full: bool, dry_run: bool,
                   keep_versions: int, lock_timeout: float, as_json: bool) -> None:
    """Export TABLE as Hive-partitioned Parquet to a folder or URL, atomically and
    incrementally (only changed partitions are rewritten).

    Exit 0 when exported (or already up to date), 2 for an unknown table or a bad target,
    75 when the warehouse is busy.
    """
    from lakehouse.export import ExportOptions, export_table
    from loader.cli import emit_json, errors_to_exit

    options = ExportOptions(to=to, full=full, dry_run=dry_run, lock_timeout=lock_timeout,
                            keep_versions=keep_versions)
    with errors_to_exit():
        report = export_table(obj.config(), table, options)
    if as_json:
        emit_json(report.as_dict())
        return
    _print_report(report)


def _print_report(report: Any) -> None:
    mib = 1024 * 1024
    if report.dry_run:
        if report.up_to_date:
            click.echo(f"dry run: {report.table} is up to date at {report.target} "
                       f"(export {report.export_id})")
            return
        click.echo(f"dry run: {report.table} -> {report.target}: would write "
                   f"{len(report.written)} partitions ({report.rows_written:,} rows), carry "
                   f"over {len(report.carried_over)}, remove {len(report.removed)} "
                   f"[{report.reason}]")
    elif report.up_to_date:
        click.echo(f"{report.table} is up to date at {report.target} (export "
                   f"{report.export_id}, {report.rows:,} rows): nothing changed")
    else:
        click.echo(f"exported {report.table} -> {report.path} in {report.seconds:.2f}s: "
                   f"{len(report.written)} partitions written ({report.rows_written:,} rows, "
                   f"{report.bytes_written / mib:,.1f} MiB), {len(report.carried_over)} "
                   f"carried over, {len(report.removed)} removed; {report.rows:,} rows, "
                   f"{report.bytes / mib:,.1f} MiB in all [{report.reason}]")
    for label, values in (("written", report.written), ("removed", report.removed)):
        if values and len(values) <= 20:
            click.echo(f"  {label}: {', '.join('NULL' if v is None else v for v in values)}")
    if not report.dry_run:
        where = report.current or report.path
        key = f" (Hive partitioning on {report.partition_key})" if report.partition_key else ""
        click.echo(f"  read it at {where}{key}, or through {report.pointer}")
