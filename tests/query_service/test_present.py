"""How the message view sums up a recipient's events."""

from __future__ import annotations

from query_service.present import message_view
from trackdelivery.events import DeliveryEvent, EventType
from trackdelivery.store.types import MessageView

T0 = 1_795_600_000.0


def view_of(*events: DeliveryEvent) -> MessageView:
    return MessageView(server="web1", msgid="1xWBtj-00000000Jua-2oTY", arrival={"arrival_time": T0},
                       events=list(events), lines=[], bounce_msgids=[], parent_msgid=None)


def event(kind: EventType, time: float, event_id: str) -> DeliveryEvent:
    return DeliveryEvent(type=kind, server="web1", msgid="1xWBtj-00000000Jua-2oTY", time=time,
                         recipient="hello@lakelaw.de", event_id=event_id)


def test_a_message_frozen_in_the_second_it_arrived_is_frozen_whatever_the_event_ids() -> None:
    for waiting_id, frozen_id in (("a" * 24, "f" * 24), ("f" * 24, "a" * 24)):
        answer = message_view(view_of(event(EventType.IN_PROGRESS, T0, waiting_id),
                                      event(EventType.FROZEN, T0, frozen_id)))
        assert [r["state"] for r in answer["recipients"]] == ["frozen"]


def test_a_final_outcome_wins_over_a_later_deferral_and_waiting_stays_waiting() -> None:
    delivered = message_view(view_of(event(EventType.IN_PROGRESS, T0, "1" * 24),
                                     event(EventType.DELIVERED, T0 + 5, "2" * 24)))
    assert [r["state"] for r in delivered["recipients"]] == ["delivered"]
    waiting = message_view(view_of(event(EventType.IN_PROGRESS, T0, "1" * 24)))
    assert [r["state"] for r in waiting["recipients"]] == ["in_progress"]


def test_an_archive_copy_followed_by_a_deferral_shows_the_deferral() -> None:
    def recipient_state(*events: DeliveryEvent) -> list[str]:
        return [r["state"] for r in message_view(view_of(*events))["recipients"]]

    copy = event(EventType.ARCHIVED, T0 + 1, "2" * 24)
    assert recipient_state(event(EventType.IN_PROGRESS, T0, "1" * 24), copy,
                           event(EventType.DEFERRED, T0 + 2, "3" * 24)) == ["deferred"]
    # the incoming copy is logged after the mailbox delivery: it stays the recipient's state
    assert recipient_state(event(EventType.DELIVERED, T0 + 1, "3" * 24), event(EventType.ARCHIVED, T0 + 2, "2" * 24)
                           ) == ["archived"]
    assert recipient_state(copy, event(EventType.DELIVERED, T0 + 2, "3" * 24)) == ["delivered"]
    assert recipient_state(copy, event(EventType.DEFERRED, T0 + 2, "3" * 24),
                           event(EventType.CANCELLED, T0 + 9, "4" * 24)) == ["cancelled"]
