"""Lake's core, shared by the producer and the loader.

Light on purpose: importing ``lakehouse`` (or its light modules ``layout``, ``fsio``,
``manifest``, ``errors``) must not load duckdb or pandera, so producers stay cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"
