"""JSON coercion: how Lake writes a value that JSON cannot hold, in what it stores and in what
it prints.

Two rules, each written once, because their readers differ:

- :func:`jsonable` for what Lake stores (``_reason.json``, the JSON columns of the ledger and
  the run log): a JSON scalar as it is, anything else, NaN and the infinities too, as its
  ``str()``. Stored records stay strict JSON, and a failure case reads as the value's own
  text, as it always has (records written before and after compare equal).
- :func:`json_default` for what the CLI prints (``--json``, ``lake query --format json``,
  export reports): dates and times in ISO 8601, which JSON tools parse, decimals as text,
  bytes as hex (their ``str()`` is a Python literal), anything else as its ``str()``.

Light: standard library only (``lakehouse.errors`` uses it).
"""

from __future__ import annotations

import math
from datetime import date, datetime
from decimal import Decimal
from typing import Any


def jsonable(value: Any) -> Any:
    """A value strict JSON can hold: NaN and infinities become text, objects their str().

    Also the ``default=`` of ``json.dumps`` for stored records: it is then called only for
    objects JSON cannot hold, and gives their ``str()``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def json_default(value: Any) -> Any:
    """The ``default=`` of ``json.dumps`` for printed output: dates and times in ISO 8601,
    decimals as text, bytes as hex, anything else as its str()."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
