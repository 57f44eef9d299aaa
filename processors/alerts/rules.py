"""The alert rules: their defaults, the rules file, and which signals each rule takes from an event.

Rules are data (``RuleSettings``); the behaviour of each *kind* is a selector (event → counters) here
and a condition in ``engine.py``. A rules file (TOML) overrides defaults by name and may add more
rules of a known kind::

    [rules.provider_block]
    threshold = 20
    window = "30m"

    [rules.gmail_only]
    kind = "provider_block"
    providers = ["gmail"]
    scope = ["fleet", "provider"]
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from processors.alerts.exceptions import RuleConfigError
from processors.alerts.signatures import SIGNATURES, match_signature, provider_of
from processors.alerts.types import MAX_SCOPE_VALUE, RuleKind, RuleSettings, ScopeKind, Severity, Signal

HOUR = 3600.0
MINUTE = 60.0

DEFAULT_RULES: tuple[RuleSettings, ...] = (
    RuleSettings(
        "persistent_deferral", RuleKind.PERSISTENT_DEFERRAL, (ScopeKind.SERVER, ScopeKind.REMOTE_DOMAIN),
        window=HOUR, threshold=5, cooldown=6 * HOUR, min_age=4 * HOUR, severity=Severity.WARNING,
        resolve_after=2 * HOUR, update_every=HOUR,
    ),
    RuleSettings(
        "provider_throttling", RuleKind.PROVIDER_BLOCK, (ScopeKind.SERVER, ScopeKind.PROVIDER),
        window=15 * MINUTE, threshold=10, cooldown=HOUR, severity=Severity.CRITICAL, resolve_after=30 * MINUTE,
        signatures=("gmail_rate_limit", "gmail_unauthenticated", "yahoo_tss"), min_share=0.2,
    ),
    RuleSettings(
        "ip_blocklisted", RuleKind.PROVIDER_BLOCK, (ScopeKind.SERVER, ScopeKind.PROVIDER),
        window=2 * HOUR, threshold=5, cooldown=6 * HOUR, severity=Severity.CRITICAL, resolve_after=2 * HOUR,
        signatures=("gmail_blocked", "microsoft_block_list", "spamhaus", "block_list"), min_share=0.75,
    ),
    RuleSettings(
        "sender_domain_bounce_ratio", RuleKind.FAILURE_RATIO, (ScopeKind.SERVER, ScopeKind.SENDER_DOMAIN),
        window=HOUR, threshold=0.5, bounce_ratio=0.5, min_volume=40, cooldown=3 * HOUR,
    ),
    RuleSettings(
        "server_failure_ratio", RuleKind.FAILURE_RATIO, (ScopeKind.SERVER,),
        window=HOUR, threshold=0.3, bounce_ratio=0.3, deferral_ratio=0.5, min_volume=200, cooldown=3 * HOUR,
    ),
    RuleSettings(
        "outbound_spam", RuleKind.OUTBOUND_SPAM, (ScopeKind.SERVER, ScopeKind.USER),
        window=HOUR, threshold=300, messages_per_hour=300, bounce_ratio=0.5, min_volume=40, limit_hits=5,
        cooldown=6 * HOUR, severity=Severity.CRITICAL, resolve_after=2 * HOUR,
    ),
    RuleSettings(
        "frozen_messages", RuleKind.FROZEN, (ScopeKind.SERVER,),
        window=HOUR, threshold=10, cooldown=3 * HOUR,
    ),
    RuleSettings(
        "queue_backlog", RuleKind.QUEUE_BACKLOG, (ScopeKind.SERVER,),
        window=HOUR, threshold=300, growth=1.5, cooldown=3 * HOUR,
    ),
    RuleSettings(
        "shipper_silent", RuleKind.SHIPPER_SILENT, (ScopeKind.SERVER,),
        window=10 * MINUTE, threshold=1, cooldown=0.0, severity=Severity.CRITICAL,
    ),
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": MINUTE, "h": HOUR, "d": 86400.0}
_DURATION_FIELDS = {"window", "cooldown", "resolve_after", "min_age", "update_every"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_duration(value: Any, what: str) -> float:
    """Seconds from a number or a text like ``90s``, ``15m``, ``4h``, ``2d``."""
    if isinstance(value, bool):
        raise RuleConfigError(f"{what}: not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise RuleConfigError(f"{what}: not a duration: {value!r} (use e.g. 90s, 15m, 4h, 2d)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise RuleConfigError(f"{what}: a finite, non-negative duration")
    return seconds


def _coerce(rule: str, name: str, value: Any, current: Any) -> Any:
    what = f"rule {rule!r}: {name}"
    if name in _DURATION_FIELDS:
        return None if value is None and name == "resolve_after" else parse_duration(value, what)
    if name == "kind":
        try:
            return RuleKind(value)
        except ValueError:
            raise RuleConfigError(f"{what}: unknown kind {value!r} ({', '.join(RuleKind)})") from None
    if name == "severity":
        try:
            return Severity(value)
        except ValueError:
            raise RuleConfigError(f"{what}: unknown severity {value!r} ({', '.join(Severity)})") from None
    if name == "scope":
        items = [value] if isinstance(value, str) else value
        try:
            scope = tuple(ScopeKind(item) for item in items)
        except (TypeError, ValueError):
            raise RuleConfigError(f"{what}: scopes are {', '.join(ScopeKind)}") from None
        if not scope or len(set(scope)) != len(scope):
            raise RuleConfigError(f"{what}: give one or more different scopes")
        return scope
    if name in ("signatures", "providers") and not isinstance(value, list):
        raise RuleConfigError(f"{what}: a list of names")
    if name == "signatures":
        known = {signature.name for signature in SIGNATURES}
        if not all(isinstance(item, str) and item in known for item in value):
            raise RuleConfigError(f"{what}: a list of signature names ({', '.join(sorted(known))})")
        return tuple(value)
    if name == "providers":
        if not all(isinstance(item, str) for item in value):
            raise RuleConfigError(f"{what}: a list of provider names")
        return tuple(item.lower() for item in value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise RuleConfigError(f"{what}: true or false")
        return value
    if isinstance(current, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise RuleConfigError(f"{what}: a finite non-negative number")
        if isinstance(current, int) and value != int(value):
            raise RuleConfigError(f"{what}: a whole number")
        return type(current)(value)
    raise RuleConfigError(f"{what}: cannot be set")


def build_rules(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, RuleSettings]:
    """The default rules with ``overrides`` (rule name → settings) applied; new names add rules."""
    rules = {rule.name: rule for rule in DEFAULT_RULES}
    settable = {f.name for f in fields(RuleSettings)} - {"name"}
    for name, values in (overrides or {}).items():
        if not _NAME.match(name):
            raise RuleConfigError(f"rule name {name!r}: use letters, digits, '_', '-' or '.' (at most 64)")
        if not isinstance(values, Mapping):
            raise RuleConfigError(f"rule {name!r}: expected a table of settings")
        unknown = set(values) - settable
        if unknown:
            raise RuleConfigError(f"rule {name!r}: unknown setting(s) {', '.join(sorted(unknown))}")
        base = rules.get(name)
        if base is None:
            if "kind" not in values:
                raise RuleConfigError(f"rule {name!r} is new: it needs a kind ({', '.join(RuleKind)})")
            kind = _coerce(name, "kind", values["kind"], None)
            template = next(rule for rule in DEFAULT_RULES if rule.kind == kind)
            base = replace(template, name=name)
        changes = {key: _coerce(name, key, value, getattr(base, key)) for key, value in values.items()}
        rules[name] = replace(base, **changes)
    for rule in rules.values():
        if rule.window <= 0:
            raise RuleConfigError(f"rule {rule.name!r}: window must be positive")
    return rules


def load_rules(path: Path | str | None) -> dict[str, RuleSettings]:
    """Rules from a TOML file (``[rules.NAME]`` tables), or the defaults when ``path`` is None."""
    if path is None:
        return build_rules()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise RuleConfigError(f"cannot read the rules file {path}: {error.strerror or error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RuleConfigError(f"{path}: not valid TOML: {error}") from error
    extra = set(data) - {"rules"}
    if extra:
        names = ", ".join(sorted(extra))
        raise RuleConfigError(f"{path}: unknown top-level key(s) {names}; put rules under [rules.NAME]")
    rules = data.get("rules", {})
    if not isinstance(rules, dict):
        raise RuleConfigError(f"{path}: 'rules' must be a table of [rules.NAME] tables")
    return build_rules(rules)


# ---- selectors: event → signals -------------------------------------------------------------------

MAX_EXAMPLE_TEXT = 300
OUTCOME_TYPES = frozenset({"delivered", "deferred", "bounced", "expired"})
FAILED_TYPES = frozenset({"bounced", "expired"})
_SEND_LIMIT = re.compile(r"max emails per hour|max defers and failures|maximum defers", re.IGNORECASE)
_NOT_A_NEW_DEFERRAL = frozenset({"retry_wait", "greylisted"})


def _text(value: Any, limit: int = MAX_EXAMPLE_TEXT) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def example_of(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "event_id": _text(event.get("event_id"), 64),
        "type": _text(event.get("type"), 32),
        "time": event.get("time"),
        "server": _text(event.get("server"), 255),
        "msgid": _text(event.get("msgid"), 64),
        "sender": _text(event.get("sender")),
        "recipient": _text(event.get("recipient")),
        "cpanel_user": _text(event.get("cpanel_user"), 64),
        "reason": _text(event.get("reason"), 64),
        "response": _text(event.get("response")),
    }


def user_of(event: Mapping[str, Any]) -> str | None:
    return event.get("cpanel_user") or event.get("auth_id") or None


def remote_delivery(event: Mapping[str, Any]) -> bool:
    """An attempt to deliver to another mail server (not a local mailbox, pipe or file)."""
    transport = str(event.get("transport") or "")
    return "smtp" in transport or bool(event.get("remote_host") or event.get("remote_ip"))


def local_sender(event: Mapping[str, Any]) -> bool:
    """Mail sent by one of this server's accounts (not a bounce, not inbound from elsewhere)."""
    return bool(user_of(event)) and event.get("sender") != ""


def scope_values(rule: RuleSettings, event: Mapping[str, Any], provider: str | None = None) -> dict[str, str] | None:
    """The rule's scope for this event, or None when the event lacks one of the scope's parts."""
    scope: dict[str, str] = {}
    for kind in rule.scope:
        value: str | None
        if kind is ScopeKind.FLEET:
            value = "all"
        elif kind is ScopeKind.SERVER:
            value = event.get("server")
        elif kind is ScopeKind.SENDER_DOMAIN:
            value = (event.get("sender_domain") or "").lower() or None
        elif kind is ScopeKind.USER:
            value = user_of(event)
        elif kind is ScopeKind.PROVIDER:
            value = provider or provider_of(event.get("recipient_domain"), event.get("remote_host"))
        else:
            value = (event.get("recipient_domain") or "").lower() or None
        if not value or not isinstance(value, str):
            return None
        scope[str(kind)] = value[:MAX_SCOPE_VALUE]
    return scope


def _counters(rule: RuleSettings, event: Mapping[str, Any]) -> tuple[dict[str, Any], str | None] | None:
    """The counters this event adds to ``rule`` and, for provider blocks, the provider it names."""
    kind = rule.kind
    etype = event.get("type")
    if kind is RuleKind.PERSISTENT_DEFERRAL:
        first = (event.get("retry") or {}).get("first_attempt")
        time = event.get("time")
        if etype != "deferred" or event.get("reason") in _NOT_A_NEW_DEFERRAL:
            return None
        if first is None or time is None or time - first < rule.min_age:
            return None
        return {"recipients": str(event.get("recipient") or "")}, None
    if kind is RuleKind.PROVIDER_BLOCK:
        if etype not in OUTCOME_TYPES or event.get("reason") in _NOT_A_NEW_DEFERRAL:
            return None
        signature = match_signature(event.get("response")) if etype != "delivered" else None
        if signature is not None and rule.signatures and signature.name not in rule.signatures:
            signature = None
        if signature is None and not remote_delivery(event):
            return None
        provider = (signature.provider if signature else None) or provider_of(
            event.get("recipient_domain"), event.get("remote_host"))
        if rule.providers and provider not in rule.providers:
            return None
        if signature is None:
            return {"total": 1}, provider
        return {"total": 1, "hits": 1, "sig:" + signature.name: 1}, provider
    if kind is RuleKind.FAILURE_RATIO:
        if etype not in OUTCOME_TYPES or event.get("reason") in _NOT_A_NEW_DEFERRAL:
            return None
        account_scope = ScopeKind.SENDER_DOMAIN in rule.scope or ScopeKind.USER in rule.scope
        if account_scope and not local_sender(event):
            return None
        counters: dict[str, Any] = {"total": 1}
        if etype in FAILED_TYPES:
            counters["failed"] = 1
        elif etype == "deferred":
            counters["deferred"] = 1
        return counters, None
    if kind is RuleKind.OUTBOUND_SPAM:
        if not local_sender(event):
            return None
        counters = {"messages": str(event.get("msgid") or "")}
        if event.get("reason") == "local_limit" and _SEND_LIMIT.search(str(event.get("response") or "")[:1024]):
            counters["limit_hits"] = 1
        elif etype in OUTCOME_TYPES and event.get("reason") not in _NOT_A_NEW_DEFERRAL:
            counters["outcomes"] = 1
            if etype in FAILED_TYPES:
                counters["failed"] = 1
        return counters, None
    if kind is RuleKind.FROZEN:
        return ({"messages": str(event.get("msgid") or "")}, None) if etype == "frozen" else None
    if kind is RuleKind.QUEUE_BACKLOG:
        if etype != "deferred" or event.get("reason") == "retry_wait":
            return None
        return {"messages": str(event.get("msgid") or "")}, None
    return None  # shipper_silent works on heartbeats, not events


_TEXT_FIELDS = ("type", "server", "msgid", "recipient", "recipient_domain", "sender", "sender_domain",
                "cpanel_user", "auth_id", "transport", "remote_host", "remote_ip", "response", "reason", "event_id")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def clean_event(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields the rules read, with the types they expect; None when the event has no usable time.

    Events come from a topic anybody may write to: a field of the wrong type is dropped, never trusted.
    """
    time = event.get("time")
    if isinstance(time, bool) or not isinstance(time, int | float) or not _finite(time):
        return None
    clean: dict[str, Any] = {name: event.get(name) for name in _TEXT_FIELDS if isinstance(event.get(name), str)}
    clean["time"] = float(time)
    retry = event.get("retry")
    first = retry.get("first_attempt") if isinstance(retry, Mapping) else None
    if isinstance(first, int | float) and not isinstance(first, bool) and _finite(first):
        clean["retry"] = {"first_attempt": float(first)}
    return clean


def signals_for(rules: Iterable[RuleSettings], raw_event: Mapping[str, Any]) -> list[Signal]:
    """Every signal one delivery event gives to the enabled rules."""
    event = clean_event(raw_event)
    if event is None:
        return []
    time = event["time"]
    out: list[Signal] = []
    example: dict[str, Any] | None = None
    for rule in rules:
        if not rule.enabled:
            continue
        selected = _counters(rule, event)
        if selected is None:
            continue
        counters, provider = selected
        scope = scope_values(rule, event, provider)
        if scope is None:
            continue
        if example is None:
            example = example_of(event)
        out.append(Signal(rule.name, scope, float(time), counters, example))
    return out
