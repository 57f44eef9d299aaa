"""Errors of the alert engine."""

from __future__ import annotations


class AlertError(Exception):
    """Base of the alert engine's errors."""


class RuleConfigError(AlertError, ValueError):
    """The rules file is unreadable or names an unknown rule kind, scope or setting."""
