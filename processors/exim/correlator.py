"""Turns parsed Exim main-log lines into delivery events, correlated per (server, message id).

The state of one message is a small JSON-serialisable dict kept in an injected mapping (a faust Table
in the stream processor, a dict offline). It is always assigned back after a change, because faust
tables only publish on assignment.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import orjson

from processors.exim.reasons import HINTS, classify
from processors.exim.retry import DEFAULT_RETRY_RULES, RetryRules
from processors.exim.types import LineKind, ParsedLine
from trackdelivery.events import DeliveryEvent, EventType, Reason, RetryState, make_event_id

MAX_RECIPIENTS = 5000  # per message, retry state beyond this is not tracked
MAX_LISTED_RECIPIENTS = 1000  # recipients of the `for` list kept for in-progress events
MAX_STORED_EVENTS = 32  # events kept for re-emission (bounce linking, late arrival)
MAX_HOST_ERRORS = 8
CLASSIFY_CACHE_SIZE = 8192
MAX_LINE_HASHES = 4  # per recipient, to recognise a line fed twice

RETRY_WAIT_ERRNOS = frozenset({-52, -53, -54})
EXPIRY_MARKERS = ("retry timeout exceeded", "have been failing for a long time")
FILTER_TARGETS = frozenset({":blackhole:", "/dev/null", "discarded"})

DELIVERY_KINDS = frozenset({LineKind.DELIVERY, LineKind.DELIVERY_MORE, LineKind.CUTTHROUGH, LineKind.SUPPRESSED})

SYSTEM_USERS = frozenset({"mailnull", "mail", "exim", "Debian-exim"})  # U= of bounces, not a cPanel account

FINISHING_KINDS = DELIVERY_KINDS | {LineKind.FAILURE, LineKind.CANCELLED}

# state keys (short: this dict is the restart cost)
ARRIVAL = "a"  # DeliveryEvent field name -> value, attached to every event
ARRIVED = "arr"  # the <= line was seen
LISTED = "rc"  # recipients from the `for` list
RECIPIENTS = "r"  # recipient (lower case) -> per-recipient retry data
HOST_ERRORS = "he"
HOST_ERRORS_USED = "hu"
STORED = "ev"  # event dicts that may be re-emitted
PENDING_BOUNCE = "pb"
LINES = "n"
LAST_TIME = "t"
DONE = "done"

# per-recipient keys
R_ATTEMPTS = "n"
R_FIRST_ATTEMPT = "fa"
R_FIRST_FAILURE = "ff"
R_LAST_ATTEMPT = "la"
R_FINAL = "fin"
ARCHIVED_FINAL = str(EventType.ARCHIVED)  # final until a later attempt of the same recipient says otherwise
R_ORIGINAL = "o"
R_HASHES = "h"
R_LAST_EVENT = "le"  # attempt number of the last line (hashes[-1]), to rebuild its event when it comes again
R_ADDRESS = "a"  # the recipient as logged, when it is not all lower case
R_BOUNCE = "b"  # the bounce message that reported this recipient's failure


def state_key(server: str, msgid: str) -> str:
    """The store key of one message: ``server|msgid`` with ``|`` and ``\\`` escaped."""
    return _escape(server) + "|" + _escape(msgid)


def _escape(value: str) -> str:
    if "|" in value or "\\" in value:
        return value.replace("\\", "\\\\").replace("|", "\\|")
    return value


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2].lower() or None


def _strip_parent(parent: str) -> str:
    if len(parent) >= 2 and parent[0] in "(<" and parent[-1] in ")>":
        return parent[1:-1]
    return parent


def _line_hash(line: ParsedLine) -> int:
    return zlib.crc32(line.raw.encode("utf-8", "surrogatepass"))


def _rcpt_in_error(text: str | None) -> str | None:
    """The address of ``RCPT TO:<address>`` in a per-host error, lower case."""
    if not text:
        return None
    start = text.find("RCPT TO:<")
    if start < 0:
        return None
    start += 9
    end = text.find(">", start, start + 512)
    return text[start:end].lower() if end > start else None


def _retry_dict(retry: RetryState) -> dict[str, Any]:
    return {
        "attempt": retry.attempt,
        "first_attempt": retry.first_attempt,
        "last_attempt": retry.last_attempt,
        "next_retry": retry.next_retry,
        "give_up": retry.give_up,
    }


def _compact(event: DeliveryEvent, arrival: dict[str, Any]) -> dict[str, Any]:
    """An event as a dict to keep in the state for re-emission: no empty fields, no arrival data (the
    state has it once for all events)."""
    data = {name: getattr(event, name) for name in _EVENT_FIELDS if name not in arrival}
    data["retry"] = _retry_dict(event.retry)
    return {name: value for name, value in data.items() if value is not None}


_EVENT_FIELDS = tuple(name for name in DeliveryEvent.__dataclass_fields__ if name != "retry")


def bounded_state(state: dict[str, Any], limit: int) -> dict[str, Any]:
    """``state`` itself when its JSON fits in ``limit`` bytes, else a smaller copy that does.

    The stream processor writes each message state to its changelog as one Kafka record, which faust's
    producer refuses above 1,000,000 bytes (and that failure crashes the worker on the same record at
    every restart). Only a message with thousands of recipients, or very long addresses, gets near it.
    Detail goes first: the events kept for re-emission, the host errors, the ``for`` list; then the
    per-recipient data of the recipients seen last, whose next line starts over at attempt 1 (as beyond
    MAX_RECIPIENTS); as a last resort, all but the arrival flag, the line count and the times. Events
    are still emitted for every outcome line.
    """
    size = len(orjson.dumps(state))
    if size <= limit:
        return state
    state = dict(state)
    for name in (STORED, HOST_ERRORS, HOST_ERRORS_USED, LISTED):
        if size <= limit:
            return state
        if state.pop(name, None) is not None:
            size = len(orjson.dumps(state))
    recipients = state.get(RECIPIENTS)
    if size > limit and isinstance(recipients, dict) and recipients:
        budget = limit - (size - len(orjson.dumps(recipients))) - 2
        kept: dict[str, Any] = {}
        for rkey, rstate in recipients.items():
            item = len(orjson.dumps({rkey: rstate})) - 1  # '"key":{...},'
            if item > budget:
                break
            kept[rkey] = rstate
            budget -= item
        state[RECIPIENTS] = kept
        size = len(orjson.dumps(state))
    if size > limit:
        state = {name: state[name] for name in (ARRIVED, LINES, LAST_TIME, DONE) if name in state}
    return state


class Correlator:
    """Feed it the parsed lines of one or many servers in log order; it returns the events each line makes.

    ``emit_in_progress=False`` skips the in-progress events at arrival (offline use: ``flush`` returns
    the ones still in progress at the end). Call ``release`` now and then to bound the store.
    """

    def __init__(
        self,
        *,
        store: MutableMapping[str, dict[str, Any]] | None = None,
        retry_rules: RetryRules = DEFAULT_RETRY_RULES,
        grace_seconds: float = 3600,
        stale_seconds: float = 8 * 86400,
        emit_in_progress: bool = True,
    ) -> None:
        self.store: MutableMapping[str, dict[str, Any]] = {} if store is None else store
        self.retry_rules = retry_rules
        self.grace_seconds = grace_seconds
        self.stale_seconds = stale_seconds
        self.emit_in_progress = emit_in_progress
        self._last_time: dict[str, float] = {}
        self._classified: dict[tuple[Any, ...], tuple[Reason, str | None]] = {}
        self._handlers: dict[LineKind, Callable[[str, ParsedLine, str, dict[str, Any]], list[DeliveryEvent]]] = {
            LineKind.ARRIVAL: self._on_arrival,
            LineKind.FAKEREJECT: self._on_arrival,
            LineKind.DELIVERY: self._on_delivery,
            LineKind.DELIVERY_MORE: self._on_delivery,
            LineKind.CUTTHROUGH: self._on_delivery,
            LineKind.SUPPRESSED: self._on_delivery,
            LineKind.DEFERRAL: self._on_deferral,
            LineKind.FAILURE: self._on_failure,
            LineKind.COMPLETED: self._on_completed,
            LineKind.FROZEN: self._on_frozen,
            LineKind.CANCELLED: self._on_cancelled,
            LineKind.HOST_ERROR: self._on_host_error,
            LineKind.SPAM_SCORE: self._on_spam_score,
            LineKind.SENDER_IDENT: self._on_sender_ident,
            LineKind.CONNECTION_IDENT: self._on_connection_ident,
        }

    # -- public API ----------------------------------------------------------------------------------

    def feed(self, server: str, line: ParsedLine) -> list[DeliveryEvent]:
        """The events this line produces (possibly none, possibly re-emissions of earlier events)."""
        time = line.time
        if time is not None:
            self._last_time[server] = time
        kind = line.kind
        if kind is LineKind.REJECTION:
            return self._on_rejection(server, line)
        msgid = line.msgid
        if not msgid:
            return []
        key = state_key(server, msgid)
        state = self.store.get(key)
        handler = self._handlers.get(kind)
        if state is None:
            if handler is None:
                return []  # nothing about a message worth opening a state for
            state = {}
        state[LINES] = state.get(LINES, 0) + 1
        if time is None:
            time = state.get(LAST_TIME, self._last_time.get(server, 0.0))
        if time >= state.get(LAST_TIME, time):
            state[LAST_TIME] = time
        events = handler(server, line, msgid, state) if handler is not None else []
        if kind in FINISHING_KINDS and not state.get(DONE) and self._all_final(state):
            state[DONE] = time
        self.store[key] = state
        return events

    def release(self, now: float) -> int:
        """Drop finished messages older than the grace period and unfinished ones gone stale."""
        expired = [
            key
            for key, state in self.store.items()
            if (state.get(DONE) and now - state[DONE] > self.grace_seconds)
            or now - state.get(LAST_TIME, now) > self.stale_seconds
        ]
        for key in expired:
            del self.store[key]
        return len(expired)

    def flush(self) -> list[DeliveryEvent]:
        """In-progress events for listed recipients that have no outcome (end of an offline input)."""
        events: list[DeliveryEvent] = []
        for key, state in self.store.items():
            if state.get(DONE) or not state.get(ARRIVED):
                continue
            server, msgid = _split_key(key)
            events.extend(self._in_progress(server, msgid, state))
        return events

    # -- arrival ---------------------------------------------------------------------------------------

    def _on_arrival(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        arrival: dict[str, Any] = state.setdefault(ARRIVAL, {})
        sender = line.address
        values = {
            "arrival_time": line.time if line.time is not None else state.get(LAST_TIME),
            "sender": sender,
            "sender_domain": _domain(sender),
            "auth_id": _auth_id(line.auth),
            "client_host": line.host or line.helo,
            "client_ip": line.host_ip,
            "protocol": line.protocol,
            "size": line.size,
            "subject": line.subject,
            "message_id_header": line.message_id_header,
            "parent_msgid": line.bounce_parent,
        }
        for name, value in values.items():
            if value is not None:
                arrival[name] = value
        if line.user and line.user not in SYSTEM_USERS and "cpanel_user" not in arrival:
            arrival["cpanel_user"] = line.user
        state[ARRIVED] = True
        listed: list[str] = state.setdefault(LISTED, [])
        known = {address.lower() for address in listed} if listed else set()
        for recipient in line.recipients:
            if len(listed) >= MAX_LISTED_RECIPIENTS:
                break
            if recipient and recipient.lower() not in known:
                known.add(recipient.lower())
                listed.append(recipient)

        events = self._reemit_with_arrival(state)
        if self.emit_in_progress:
            events.extend(self._in_progress(server, msgid, state))
        if line.bounce_parent and not _is_delay_warning(line.subject):
            events.extend(self._link_bounce(server, line.bounce_parent, msgid))
        return events

    def _reemit_with_arrival(self, state: dict[str, Any]) -> list[DeliveryEvent]:
        stored: list[dict[str, Any]] = state.get(STORED, [])
        if not stored:
            return []
        arrival = state[ARRIVAL]
        events = []
        kept = []
        for data in stored:
            events.append(DeliveryEvent.from_dict({**data, **arrival}))
            if data["type"] in (EventType.BOUNCED, EventType.EXPIRED) and not data.get("bounce_msgid"):
                kept.append(data)
        state[STORED] = kept
        return events

    def _in_progress(self, server: str, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        arrival = state.get(ARRIVAL, {})
        time = arrival.get("arrival_time", state.get(LAST_TIME, 0.0))
        covered = _covered(state)
        events = []
        for recipient in state.get(LISTED, ()):
            if recipient.lower() in covered:
                continue
            events.append(
                DeliveryEvent(
                    type=EventType.IN_PROGRESS,
                    server=server,
                    msgid=msgid,
                    time=time,
                    recipient=recipient,
                    recipient_domain=_domain(recipient),
                    **arrival,
                )
            )
        return events

    def _link_bounce(self, server: str, parent_msgid: str, bounce_msgid: str) -> list[DeliveryEvent]:
        parent_key = state_key(server, parent_msgid)
        parent = self.store.get(parent_key)
        if parent is None:
            return []
        if parent.get(PENDING_BOUNCE) == bounce_msgid or any(
            rstate.get(R_BOUNCE) == bounce_msgid for rstate in parent.get(RECIPIENTS, {}).values()
        ):
            # linked already: this arrival line is replayed (a crash after the parent's state was saved
            # but before this record was marked done); linking again would leave the id pending and
            # give it to the parent's next failure, which has a bounce of its own
            return []
        stored: list[dict[str, Any]] = parent.get(STORED, [])
        events = []
        kept = []
        for data in stored:
            if data["type"] in (EventType.BOUNCED, EventType.EXPIRED) and not data.get("bounce_msgid"):
                data["bounce_msgid"] = bounce_msgid
                rstate = parent.get(RECIPIENTS, {}).get(str(data.get("recipient", "")).lower())
                if rstate is not None:
                    rstate[R_BOUNCE] = bounce_msgid
                events.append(DeliveryEvent.from_dict({**data, **parent.get(ARRIVAL, {})}))
                if not parent.get(ARRIVED):
                    kept.append(data)  # still waiting for its arrival data
            else:
                kept.append(data)
        parent[STORED] = kept
        if not events:
            parent[PENDING_BOUNCE] = bounce_msgid  # the failure line has not been seen yet
        self.store[parent_key] = parent
        return events

    # -- arrival-side extras ---------------------------------------------------------------------------

    def _on_spam_score(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        if line.spam_score is None:
            return []
        return self._enrich_arrival(server, msgid, state, "spam_score", line.spam_score, overwrite=True)

    def _on_sender_ident(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        if not line.user:
            return []
        return self._enrich_arrival(server, msgid, state, "cpanel_user", line.user, overwrite=True)

    def _on_connection_ident(
        self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]
    ) -> list[DeliveryEvent]:
        if not line.user:
            return []
        return self._enrich_arrival(server, msgid, state, "cpanel_user", line.user, overwrite=False)

    def _enrich_arrival(
        self, server: str, msgid: str, state: dict[str, Any], name: str, value: Any, *, overwrite: bool
    ) -> list[DeliveryEvent]:
        """Arrival data logged after ``<=`` (cPanel writes these lines after it): the in-progress events
        already emitted are re-emitted with it, so the stored result does not depend on line order or
        on a line being replayed after a crash."""
        arrival = state.setdefault(ARRIVAL, {})
        if arrival.get(name) == value or (name in arrival and not overwrite):
            return []
        arrival[name] = value
        if self.emit_in_progress and state.get(ARRIVED):
            return self._in_progress(server, msgid, state)
        return []

    # -- outcomes --------------------------------------------------------------------------------------

    def _on_host_error(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        errors: list[dict[str, Any]] = state.get(HOST_ERRORS, [])
        if state.get(HOST_ERRORS_USED):
            errors = []  # a new delivery attempt starts
            state[HOST_ERRORS_USED] = False
        entry = {
            "remote_host": line.host,
            "remote_ip": line.host_ip,
            "response": line.error or line.detail,
            "smtp_code": line.smtp_code,
            "enhanced_code": line.enhanced_code,
            "smtp_phase": line.smtp_phase,
            "exim_errno": line.errno,
            "rcpt": _rcpt_in_error(line.error),
        }
        errors.append({name: value for name, value in entry.items() if value is not None})
        state[HOST_ERRORS] = errors[-MAX_HOST_ERRORS:]
        return []

    def _host_error_for(self, state: dict[str, Any], address: str, text: str | None) -> dict[str, Any] | None:
        """The per-host error this ==/** line summarises: one about its RCPT, else a connection-level one
        with the same text (the summary repeats it, e.g. "Connection timed out")."""
        errors: list[dict[str, Any]] = state.get(HOST_ERRORS, [])
        if not errors:
            return None
        state[HOST_ERRORS_USED] = True
        lowered = address.lower()
        for entry in reversed(errors):
            if entry.get("rcpt") == lowered:
                return entry
        for entry in reversed(errors):
            response = entry.get("response", "")
            if "rcpt" not in entry and (not text or (response and (text in response or response in text))):
                return entry
        return None

    def _on_delivery(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        target = line.address or ""
        event_type = EventType.DELIVERED
        transport = line.transport or ""
        if line.kind is LineKind.SUPPRESSED or transport == "**bypassed**" or target in FILTER_TARGETS:
            event_type = EventType.FILTERED
        elif transport.startswith("archiver_") or (line.router or "").startswith("archiver_"):
            event_type = EventType.ARCHIVED
        fields = {
            "response": line.confirmation,
            "remote_host": line.host,
            "remote_ip": line.host_ip,
            "smtp_code": line.smtp_code,
            "enhanced_code": line.enhanced_code,
        }
        return self._outcome(server, line, msgid, state, event_type, fields, attempt=True, final=True)

    def _on_deferral(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        text = line.error or line.detail
        retry_wait = line.errno in RETRY_WAIT_ERRNOS or (
            text is not None and "retry time not reached" in text and "failing for a long time" not in text
        )
        fields = self._failure_fields(line, state, "defer", retry_wait=retry_wait)
        return self._outcome(
            server, line, msgid, state, EventType.DEFERRED, fields, attempt=not retry_wait, final=False
        )

    def _on_failure(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        text = (line.error or line.detail or line.raw).lower()
        expired = any(marker in text for marker in EXPIRY_MARKERS)
        fields = self._failure_fields(line, state, "fail", expired=expired)
        event_type = EventType.EXPIRED if expired else EventType.BOUNCED
        return self._outcome(server, line, msgid, state, event_type, fields, attempt=not expired, final=True)

    def _failure_fields(
        self,
        line: ParsedLine,
        state: dict[str, Any],
        kind: str,
        *,
        retry_wait: bool = False,
        expired: bool = False,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "remote_host": line.host,
            "remote_ip": line.host_ip,
            "response": line.error or line.detail,
            "smtp_code": line.smtp_code,
            "enhanced_code": line.enhanced_code,
            "smtp_phase": line.smtp_phase,
            "exim_errno": line.errno,
        }
        host_error = None if retry_wait or expired else self._host_error_for(state, line.address or "", line.error)
        if host_error:
            if fields["remote_host"] is None and fields["remote_ip"] is None:
                fields["remote_host"] = host_error.get("remote_host")
                fields["remote_ip"] = host_error.get("remote_ip")
            if fields["smtp_code"] is None:
                # the host's SMTP answer says more than the summary on the ==/** line
                for name in ("smtp_code", "enhanced_code", "smtp_phase"):
                    if fields[name] is None:
                        fields[name] = host_error.get(name)
                if fields["response"] is None or host_error.get("smtp_code") is not None:
                    fields["response"] = host_error.get("response", fields["response"])
            if fields["exim_errno"] is None:
                fields["exim_errno"] = host_error.get("exim_errno")
        if retry_wait:
            reason, hint = Reason.RETRY_WAIT, HINTS.get(Reason.RETRY_WAIT)
        elif expired:
            reason, hint = Reason.EXPIRED, HINTS.get(Reason.EXPIRED)
        else:
            reason, hint = self._classify(
                fields["response"] or "",
                fields["smtp_code"],
                fields["enhanced_code"],
                fields["exim_errno"],
                fields["smtp_phase"],
                kind,
            )
        fields["reason"] = reason
        fields["hint"] = hint
        return fields

    def _outcome(
        self,
        server: str,
        line: ParsedLine,
        msgid: str,
        state: dict[str, Any],
        event_type: EventType,
        fields: dict[str, Any],
        *,
        attempt: bool,
        final: bool,
    ) -> list[DeliveryEvent]:
        target = line.address or ""
        parents = [_strip_parent(parent) for parent in line.parents if parent] if line.parents else []
        # the first address among the target and its parents (a file, pipe or local part is a target only)
        recipient = target if "@" in target else next((parent for parent in parents if "@" in parent), target)
        delivered_to = target if recipient is not target else None
        original = parents[-1] if parents and parents[-1].lower() != recipient.lower() else None
        time = self._time(server, line, state)
        line_hash = _line_hash(line)

        recipients: dict[str, dict[str, Any]] = state.setdefault(RECIPIENTS, {})
        rkey = recipient.lower()
        rstate = recipients.get(rkey)
        if rstate is None:
            rstate = {}
            if len(recipients) < MAX_RECIPIENTS:
                recipients[rkey] = rstate
        hashes: list[int] = rstate.get(R_HASHES, [])
        repeat = line_hash in hashes
        if repeat and line_hash != hashes[-1]:
            return []  # an older line of this recipient fed again: its event was emitted then
        if not repeat:
            rstate[R_HASHES] = [*hashes[-(MAX_LINE_HASHES - 1) :], line_hash]
            if recipient != rkey:
                rstate[R_ADDRESS] = recipient
            if original is not None:
                rstate[R_ORIGINAL] = original.lower()

        if repeat:
            number = int(rstate.get(R_LAST_EVENT, 0))  # the same line again: rebuild the same event
        elif attempt:
            number = rstate.get(R_ATTEMPTS, 0) + 1
            rstate[R_ATTEMPTS] = number
            rstate.setdefault(R_FIRST_ATTEMPT, time)
            rstate[R_LAST_ATTEMPT] = time
            if event_type is EventType.DEFERRED:
                rstate.setdefault(R_FIRST_FAILURE, time)
        else:
            number = 0
        if number:
            rstate[R_LAST_EVENT] = number
        else:
            rstate.pop(R_LAST_EVENT, None)
        if final:
            rstate[R_FINAL] = str(event_type)
            retry = RetryState(number, rstate.get(R_FIRST_ATTEMPT), rstate.get(R_LAST_ATTEMPT))
        else:
            if rstate.get(R_FINAL) == ARCHIVED_FINAL:
                # cPanel's outgoing archive copy is logged before the remote outcome: a deferral after it
                # means the recipient is still open (it is frozen or cancelled with the message)
                del rstate[R_FINAL]
            retry = self._retry_estimate(rstate, number)

        arrival = state.get(ARRIVAL, {})
        event = DeliveryEvent(
            type=event_type,
            server=server,
            msgid=msgid,
            time=time,
            recipient=recipient or None,
            original_recipient=original,
            recipient_domain=_domain(recipient),
            router=line.router,
            transport=line.transport,
            tls=line.tls,
            retry=retry,
            delivered_to=delivered_to,
            **fields,
            **arrival,
        )
        failed = event_type in (EventType.BOUNCED, EventType.EXPIRED)
        if repeat:
            event.bounce_msgid = rstate.get(R_BOUNCE) if failed else None
            return [event]
        if failed and state.get(PENDING_BOUNCE):
            event.bounce_msgid = rstate[R_BOUNCE] = state.pop(PENDING_BOUNCE)
        if not state.get(ARRIVED) or (failed and not event.bounce_msgid):
            stored = state.setdefault(STORED, [])
            stored.append(_compact(event, arrival))
            del stored[:-MAX_STORED_EVENTS]
        return [event]

    def _retry_estimate(self, rstate: dict[str, Any], attempt: int) -> RetryState:
        first_failure = rstate.get(R_FIRST_FAILURE)
        last_attempt = rstate.get(R_LAST_ATTEMPT)
        next_retry = give_up = None
        if first_failure is not None and last_attempt is not None:
            next_retry = self.retry_rules.next_retry(first_failure, last_attempt)
            give_up = self.retry_rules.give_up(first_failure)
        return RetryState(attempt, rstate.get(R_FIRST_ATTEMPT), last_attempt, next_retry, give_up)

    # -- message lifecycle -----------------------------------------------------------------------------

    def _on_completed(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        state[DONE] = self._time(server, line, state)
        # nothing can need these any more (its bounce, if any, was logged before Completed): keep the state small
        for name in (STORED, HOST_ERRORS, HOST_ERRORS_USED, LISTED, PENDING_BOUNCE):
            state.pop(name, None)
        return []

    def _on_frozen(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        return self._for_open_recipients(server, line, msgid, state, EventType.FROZEN)

    def _on_cancelled(self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any]) -> list[DeliveryEvent]:
        return self._for_open_recipients(server, line, msgid, state, EventType.CANCELLED)

    def _for_open_recipients(
        self, server: str, line: ParsedLine, msgid: str, state: dict[str, Any], event_type: EventType
    ) -> list[DeliveryEvent]:
        time = self._time(server, line, state)
        arrival = state.get(ARRIVAL, {})
        recipients: dict[str, dict[str, Any]] = state.setdefault(RECIPIENTS, {})
        response = line.detail or line.error
        events = []
        for recipient, rstate in list(self._open_recipients(state)):
            retry = RetryState(0, rstate.get(R_FIRST_ATTEMPT), rstate.get(R_LAST_ATTEMPT))
            if event_type is EventType.CANCELLED:
                rstate[R_FINAL] = str(event_type)
            elif rstate.get(R_FIRST_FAILURE) is not None:
                retry.give_up = self.retry_rules.give_up(rstate[R_FIRST_FAILURE])
            if not rstate and len(recipients) < MAX_RECIPIENTS:
                # a listed recipient gets an outcome of its own: no in-progress event for it any more
                if recipient != recipient.lower():
                    rstate[R_ADDRESS] = recipient
                recipients[recipient.lower()] = rstate
            original = rstate.get(R_ORIGINAL)
            events.append(
                DeliveryEvent(
                    type=event_type,
                    server=server,
                    msgid=msgid,
                    time=time,
                    recipient=recipient,
                    original_recipient=original,
                    recipient_domain=_domain(recipient),
                    response=response,
                    retry=retry,
                    **arrival,
                )
            )
        return events

    def _open_recipients(self, state: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Recipients without a final outcome: tracked ones, then listed ones never seen since."""
        recipients: dict[str, dict[str, Any]] = state.get(RECIPIENTS, {})
        for key, rstate in list(recipients.items()):
            if not rstate.get(R_FINAL):
                yield rstate.get(R_ADDRESS, key), rstate
        covered = _covered(state)
        for recipient in state.get(LISTED, ()):
            if recipient.lower() not in covered:
                yield recipient, {}

    def _all_final(self, state: dict[str, Any]) -> bool:
        recipients: dict[str, dict[str, Any]] = state.get(RECIPIENTS, {})
        if not recipients:
            return False
        for rstate in recipients.values():
            if R_FINAL not in rstate:
                return False
        covered = _covered(state)
        return all(recipient.lower() in covered for recipient in state.get(LISTED, ()))

    # -- stateless -------------------------------------------------------------------------------------

    def _on_rejection(self, server: str, line: ParsedLine) -> list[DeliveryEvent]:
        time = self._time(server, line, None)
        arrival: dict[str, Any] = {}
        if line.msgid:
            # rejected after DATA: the message was never accepted; keep what the ACLs logged before
            key = state_key(server, line.msgid)
            state = self.store.get(key)
            if state is not None:
                arrival = dict(state.get(ARRIVAL, {}))
                state[DONE] = time
                self.store[key] = state
        text = line.error or line.detail or ""
        reason, hint = self._classify(text, line.smtp_code, line.enhanced_code, line.errno, line.smtp_phase, "reject")
        arrival.update(
            sender=line.sender,
            sender_domain=_domain(line.sender),
            client_host=line.host or line.helo,
            client_ip=line.host_ip,
        )
        if line.auth:
            arrival["auth_id"] = _auth_id(line.auth)
        if line.user:
            arrival.setdefault("cpanel_user", line.user)
        recipients: list[str | None] = list(dict.fromkeys(line.recipients[:MAX_LISTED_RECIPIENTS])) or [None]
        line_hash = _line_hash(line)
        return [
            DeliveryEvent(
                type=EventType.REJECTED,
                server=server,
                msgid=line.msgid,
                time=time,
                recipient=recipient,
                recipient_domain=_domain(recipient),
                response=text or None,
                smtp_code=line.smtp_code,
                enhanced_code=line.enhanced_code,
                smtp_phase=line.smtp_phase,
                reason=reason,
                hint=hint,
                # rejections of one address in the same second (from different clients) are different events
                event_id=make_event_id(server, line.msgid, f"{recipient}\x1f{line_hash}", EventType.REJECTED, time),
                **arrival,
            )
            for recipient in recipients
        ]

    # -- helpers ---------------------------------------------------------------------------------------

    def _classify(
        self,
        text: str,
        smtp_code: int | None,
        enhanced_code: str | None,
        errno: int | None,
        phase: str | None,
        kind: str,
    ) -> tuple[Reason, str | None]:
        """The classifier's answer, remembered: the same responses come back again and again."""
        key = (text, smtp_code, enhanced_code, errno, phase, kind)
        cached = self._classified.get(key)
        if cached is not None:
            return cached
        try:
            result = classify(
                text=text, smtp_code=smtp_code, enhanced_code=enhanced_code, errno=errno, phase=phase, kind=kind
            )
            answer: tuple[Reason, str | None] = (result.reason, result.hint)
        except Exception:  # a classifier bug must not stop the stream
            answer = (Reason.UNKNOWN, HINTS.get(Reason.UNKNOWN))
        if len(self._classified) >= CLASSIFY_CACHE_SIZE:
            self._classified.clear()
        self._classified[key] = answer
        return answer

    def _time(self, server: str, line: ParsedLine, state: dict[str, Any] | None) -> float:
        if line.time is not None:
            return line.time
        if state and LAST_TIME in state:
            return float(state[LAST_TIME])
        return self._last_time.get(server, 0.0)


def _covered(state: dict[str, Any]) -> set[str]:
    """Lower-case addresses that have an outcome of their own or through an address they redirect to."""
    recipients: dict[str, dict[str, Any]] = state.get(RECIPIENTS, {})
    covered = set(recipients)
    covered.update(rstate[R_ORIGINAL] for rstate in recipients.values() if R_ORIGINAL in rstate)
    return covered


def _auth_id(auth: str | None) -> str | None:
    if not auth:
        return None
    name, sep, ident = auth.partition(":")
    return ident if sep and ident else name


def _is_delay_warning(subject: str | None) -> bool:
    return bool(subject) and subject.startswith("Warning: message")  # type: ignore[union-attr]


def _split_key(key: str) -> tuple[str, str]:
    parts: list[str] = []
    current: list[str] = []
    chars = iter(key)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == "|" and not parts:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    if len(parts) == 1:
        parts.append("")
    return parts[0], parts[1]
