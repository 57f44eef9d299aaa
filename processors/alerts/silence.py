"""The shipper-silence rule: every shipper publishes a heartbeat; a server whose heartbeats stop fires.

Heartbeats carry the shipper's wall time, so this rule (alone) works in wall time: a server is silent
when its newest heartbeat is older than the rule's window. A check record, published by the alert
worker's timer into the same partition as the server's heartbeats, is what notices the silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from processors.alerts.engine import HINTS, alert_id
from processors.alerts.types import Alert, AlertState, RuleKind, RuleSettings

HEARTBEAT_VERSION = 1


@dataclass(slots=True)
class ShipperState:
    server: str
    last_beat: float
    stopping: bool = False
    bytes_behind: int | None = None
    alert: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"server": self.server, "last_beat": self.last_beat, "stopping": self.stopping,
             "bytes_behind": self.bytes_behind, "alert": self.alert}
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> ShipperState:
        data = orjson.loads(raw)
        return cls(data["server"], data["last_beat"], data.get("stopping", False), data.get("bytes_behind"),
                   data.get("alert"))


class SilenceMonitor:
    def __init__(self, rule: RuleSettings | None) -> None:
        self.rule = rule if rule is not None and rule.enabled else None

    def beat(self, state: ShipperState | None, heartbeat: dict[str, Any]) -> tuple[ShipperState, list[Alert]]:
        """A heartbeat arrived: remember it, and resolve the server's silence alert if one is firing."""
        server = str(heartbeat.get("server") or "")[:255]
        beat_time = float(heartbeat.get("time") or 0.0)
        if state is None:
            state = ShipperState(server, beat_time)
        elif beat_time <= state.last_beat:
            return state, []  # an old heartbeat read late, or one read again
        state.last_beat = beat_time
        state.stopping = bool(heartbeat.get("stopping"))
        behind = heartbeat.get("bytes_behind")
        state.bytes_behind = behind if isinstance(behind, int) else None
        if state.alert is None or state.stopping:
            return state, []
        alert = Alert.from_dict(state.alert)
        alert.version += 1
        alert.state = AlertState.RESOLVED
        alert.resolved_at = beat_time
        alert.last_seen = beat_time
        state.alert = None
        return state, [alert]

    def check(self, state: ShipperState, now: float) -> tuple[ShipperState, list[Alert]]:
        """The timer: fire when the newest heartbeat is older than the window."""
        rule = self.rule
        if rule is None or state.alert is not None:
            return state, []
        silent_for = now - state.last_beat
        if silent_for < rule.window:
            return state, []
        how = "stopped cleanly" if state.stopping else "stopped sending heartbeats"
        scope = {"server": state.server}
        alert = Alert(
            id=alert_id(rule.name, scope, state.last_beat), rule=rule.name, kind=RuleKind.SHIPPER_SILENT,
            severity=rule.severity, scope=scope, state=AlertState.FIRING, first_seen=state.last_beat,
            last_seen=now, count=round(silent_for),
            summary=f"the shipper on {state.server} {how} {silent_for / 60:.0f} min ago: no log lines arrive from it",
            hint=HINTS[RuleKind.SHIPPER_SILENT], details={"last_heartbeat": state.last_beat},
        )
        state.alert = alert.to_dict()
        return state, [alert]
