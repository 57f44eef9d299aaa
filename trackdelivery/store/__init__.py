"""The Redis query store shared by the writer (processors) and the reader (query service).

Layout, encodings and the reasons behind them: ``docs/redis-model.md``.
"""

from trackdelivery.store.exceptions import InvalidCursor, InvalidQuery, StoreError
from trackdelivery.store.types import (
    MessageLine,
    MessageView,
    Page,
    Query,
    QueryResult,
    StatsResult,
    StatsRow,
    StoreSettings,
    WriteStats,
)

__all__ = [
    "InvalidCursor",
    "InvalidQuery",
    "MessageLine",
    "MessageView",
    "Page",
    "Query",
    "QueryResult",
    "StatsResult",
    "StatsRow",
    "StoreError",
    "StoreSettings",
    "WriteStats",
]
