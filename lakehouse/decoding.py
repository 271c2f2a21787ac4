"""Decoding a staged Parquet file into Arrow, bounded: never much more than the bytes allowed.

A file's size says nothing about its decoded size (a decompression bomb), so the footer bounds
it first and a file that cannot be bounded is read in batches (:func:`decode_parquet`).
Verification (``lakehouse/staged.py``) calls it with what is left of ``[lake] max_run_bytes``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from lakehouse.errors import TooLargeError

# Files bigger than this are decoded with Arrow's column threads (measured: 1M rows, 20 MB,
# 35 ms threaded against 50 ms; 50k rows, 1.3 MB, 4.5 ms against 3.7 ms).
_THREADED_DECODE_BYTES = 8 << 20
# A file whose decoded size cannot be bounded from its footer is read in batches of this many
# rows, its Arrow bytes summed as it goes (measured on 5M rows: 64k-row batches cost the same
# as one read; 1k-row batches cost 4x).
_STREAM_ROWS = 1 << 16


class RunName(Protocol):
    """The run a file belongs to, as an error names it (a ``lakehouse.staged.RunRef``)."""

    @property
    def table(self) -> str: ...

    @property
    def run_id(self) -> str: ...


def decode_parquet(ref: RunName, name: str, data: bytes, room: int) -> tuple[pa.Table, int]:
    """One Parquet file as an Arrow table and its Arrow bytes, never holding much more than
    ``room`` bytes.

    A file's size says nothing about its decoded size: a constant column of 200M rows is an
    873 KB file and 1.6 GB of Arrow. So the footer is read first. Its row count times the
    fixed width of the columns is a lower bound, checked before anything is decoded. If the
    footer also bounds the decoded size from above within ``room`` (fixed-width columns, or
    byte-array columns whose pages are small enough even if every value were the largest
    dictionary entry), the file is read whole: the fast path, for nearly every file. Otherwise
    it is read in batches of ``_STREAM_ROWS`` rows and stops as soon as their Arrow bytes pass
    ``room``.

    Raises:
        TooLargeError: the file decodes to more than ``room`` bytes.
        pa.ArrowException, OSError, ValueError: the file is not readable Parquet.
    """
    file = pq.ParquetFile(pa.BufferReader(data))
    meta = file.metadata
    schema = file.schema_arrow
    rows = meta.num_rows
    shape = _row_bytes(schema)
    low = shape[0]
    if rows * low > room:
        raise _too_large(ref, name, f"its {rows} rows take at least {rows * low} bytes once "
                                    "decoded", room)
    threads = len(data) > _THREADED_DECODE_BYTES
    if _upper_bound(meta, rows, shape) <= room:
        # ParquetFile.read skips the dataset layer: ~4x faster than read_table on small files.
        # Runs are verified off the main thread already; Arrow's own column threads only pay
        # off on big files (a 100-row file: 0.25 ms with them, 0.07 ms without).
        table = file.read(use_threads=threads)
        # Buffers of a table read whole are its own: their total is its memory, and 5x
        # cheaper to get than nbytes (3 us against 18 us on a 100-row file).
        size = table.get_total_buffer_size()
    else:
        batches, total = [], 0
        for batch in file.iter_batches(batch_size=_STREAM_ROWS, use_threads=threads):
            total += batch.nbytes
            if total > room:
                raise _too_large(ref, name, f"more than {total} bytes once decoded", room)
            batches.append(batch)
        table, size = pa.Table.from_batches(batches, schema=schema), total
    if size > room:  # the footer's bound is the footer's word: check what was read
        raise _too_large(ref, name, f"{size} bytes once decoded", room)
    return table, size


def _too_large(ref: RunName, name: str, what: str, room: int) -> TooLargeError:
    return TooLargeError(ref.table, ref.run_id,
                         f"{name}: {what}, over the {room} bytes left of [lake] max_run_bytes; "
                         "split the run into smaller ones, or raise max_run_bytes")


@lru_cache(maxsize=256)
def _row_bytes(schema: pa.Schema) -> tuple[int, bool, bool]:
    """Arrow bytes of one row at least (a variable-width value counts its offset only);
    whether that is also the most (every column fixed-width); whether no column is nested
    (then a Parquet column chunk holds one value per row)."""
    low, fixed, flat = 0, True, True
    for f in schema:
        width, exact = _type_bytes(f.type)
        low += width
        fixed = fixed and exact
        flat = flat and not pa.types.is_nested(f.type)
    return low, fixed, flat


def _type_bytes(t: pa.DataType) -> tuple[int, bool]:
    """(bytes per value at least, whether exactly) for an Arrow type."""
    if pa.types.is_dictionary(t):
        return t.index_type.bit_width // 8, False
    if pa.types.is_struct(t):
        parts = [_type_bytes(t.field(i).type) for i in range(t.num_fields)]
        return sum(w for w, _ in parts), all(e for _, e in parts)
    if pa.types.is_fixed_size_list(t):
        width, exact = _type_bytes(t.value_type)
        return t.list_size * width, exact
    if pa.types.is_large_list(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return 8, False
    if pa.types.is_list(t) or pa.types.is_map(t) or pa.types.is_string(t) or \
            pa.types.is_binary(t):
        return 4, False
    if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
        return 16, False
    try:
        return t.bit_width // 8, True  # booleans count 0: a bit each
    except ValueError:
        return 0, False  # a type of no fixed width not named above: no lower bound


def _upper_bound(meta: pq.FileMetaData, rows: int, shape: tuple[int, bool, bool]) -> int:
    """The most Arrow bytes the file can decode to, by its footer.

    Fixed-width columns only: their width per value plus a validity bit, exactly. Otherwise
    a byte-array value is at most its column chunk's uncompressed bytes (its dictionary page,
    or its plain page, lies inside them; a value repeated by RLE is where bombs come from).
    Flat columns hold one value per row, so a row group of n rows and B uncompressed bytes
    decodes to at most (n + 1) x B bytes of values besides the fixed widths: one sum per row
    group, which keeps this cheap for the many small files. Nested columns are bounded chunk
    by chunk from their value counts."""
    low, fixed, flat = shape
    total = rows * low + meta.num_columns * (rows // 8 + 64)  # + validity bitmaps
    if fixed:
        return total
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if flat:
            total += (group.num_rows + 1) * group.total_byte_size
            continue
        for c in range(group.num_columns):
            chunk = group.column(c)
            values = chunk.num_values
            if chunk.physical_type == "BYTE_ARRAY":
                size = chunk.total_uncompressed_size
                total += values * _OFFSET_BYTES + (size * values if chunk.has_dictionary_page
                                                   else size)
            else:
                width = meta.schema.column(c).length or 0  # FIXED_LEN_BYTE_ARRAY's length
                total += values * (max(width, _MAX_VALUE_BYTES) + _OFFSET_BYTES)
    return total


_MAX_VALUE_BYTES = 32  # the widest fixed-width Arrow value Parquet decodes to (decimal256)
_OFFSET_BYTES = 16  # offsets of the lists and strings a leaf value sits in (two levels)
