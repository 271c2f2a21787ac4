"""Contract of the demo `events` table, written with pandera's polars API."""

from __future__ import annotations

import polars as pl
import pandera.polars as pa


class EventSchema(pa.DataFrameModel):
    """One row per web event; `event_id` is the key, `ts` the event time (UTC)."""

    event_id: int = pa.Field(ge=0)
    ts: pl.Datetime = pa.Field()
    user_id: int = pa.Field(ge=0)
    kind: str = pa.Field(isin=["view", "click", "purchase"])
    amount: float = pa.Field(ge=0, nullable=True)

    class Config:
        strict = False  # new nullable columns may arrive (schema_evolution = "add_columns")
