"""Errors raised by the query store."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every query-store error."""


class InvalidQuery(StoreError, ValueError):
    """A query the store cannot answer as asked (bad period, unknown type, limit out of range)."""


class InvalidCursor(InvalidQuery):
    """A pagination cursor that was not produced by this store for this query."""


class WalkModuleMissing(StoreError):
    """The search was told to walk with the trackdelivery Redis module, and Redis has not loaded it."""
