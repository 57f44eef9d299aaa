"""Exim main-log understanding: line parser, correlator, reason classifier, retry rules (no I/O)."""
