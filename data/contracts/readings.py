"""Contract of the demo `readings` table, written with pandera's pandas API."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa


class ReadingSchema(pa.DataFrameModel):
    """One reading per sensor and time; physically plausible temperatures only."""

    sensor: str = pa.Field(str_matches=r"^s-\d+$")
    ts: pd.Timestamp = pa.Field()
    celsius: float = pa.Field(ge=-90, le=60)

    class Config:
        strict = True
