"""Errors raised by the tail engine."""


class TailError(Exception):
    """Base class for tail engine errors."""


class CheckpointError(TailError):
    """The checkpoint directory cannot be read or written."""
