"""Sinks the stream processors write to."""
