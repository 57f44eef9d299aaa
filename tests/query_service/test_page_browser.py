"""The web page in a real headless Chromium: search, open a bounced message, the alerts panel, and XSS payloads
stay text."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from redis.asyncio import Redis

from processors.alerts.types import AlertState, RuleKind, Severity
from processors.sinks.redis import RedisWriter
from query_service.app import create_app
from query_service.tokens import TokenStore
from tests.query_service.alert_data import alert, clear_alerts, example, put_alerts
from tests.query_service.conftest import FilledStore, serve_in_thread
from trackdelivery.events import DeliveryEvent, EventType, Reason, RetryState
from trackdelivery.generator.ids import new_format_id
from trackdelivery.store import MessageLine, StoreSettings

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_PAYLOAD = "<script>window.__xss=1</script>"
IMG_PAYLOAD = '<img src=x onerror="window.__xss=1">'
VICTIM = "victim.person@gmail.com"
HINT = "The address does not exist at the remote domain: check it for typos and ask for a current address."


def hostile_message(now: float) -> tuple[list[DeliveryEvent], list[MessageLine]]:
    """A message from acct00 that was deferred twice, then bounced, with payloads in subject and response."""
    server = "cp0.example-hosting.net"
    arrival = now - 1800
    msgid = new_format_id(int(arrival), 4242, 123456)
    common = {
        "server": server,
        "msgid": msgid,
        "recipient": VICTIM,
        "recipient_domain": "gmail.com",
        "arrival_time": arrival,
        "sender": "billing@acct00-shop.example",
        "sender_domain": "acct00-shop.example",
        "cpanel_user": "acct00",
        "auth_id": "billing@acct00-shop.example",
        "client_host": "localhost",
        "client_ip": "127.0.0.1",
        "size": 18_230,
        "spam_score": 0.4,
        "subject": f"Invoice {SCRIPT_PAYLOAD} due",
        "router": "dkim_lookuphost",
        "transport": "dkim_remote_smtp",
        "remote_host": "gmail-smtp-in.l.google.com",
        "remote_ip": "142.250.102.27",
    }
    deferral = "451 4.7.1 Try again later"
    bounce = f"550 5.1.1 {IMG_PAYLOAD} The email account that you tried to reach does not exist"
    events = [
        DeliveryEvent(
            type=EventType.DEFERRED,
            time=arrival + 2,
            response=deferral,
            smtp_code=451,
            reason=Reason.GREYLISTED,
            hint="Greylisting: the remote server asks to retry later; nothing to do unless it lasts hours.",
            retry=RetryState(1, arrival + 2, arrival + 2, arrival + 902, arrival + 4 * 86400),
            **common,
        ),
        DeliveryEvent(
            type=EventType.DEFERRED,
            time=arrival + 903,
            response=deferral,
            smtp_code=451,
            reason=Reason.GREYLISTED,
            hint="Greylisting: the remote server asks to retry later; nothing to do unless it lasts hours.",
            retry=RetryState(2, arrival + 2, arrival + 903, arrival + 1803, arrival + 4 * 86400),
            **common,
        ),
        DeliveryEvent(
            type=EventType.BOUNCED,
            time=arrival + 1500,
            response=bounce,
            smtp_code=550,
            enhanced_code="5.1.1",
            reason=Reason.RECIPIENT_UNKNOWN,
            hint=HINT,
            retry=RetryState(3, arrival + 2, arrival + 1500),
            bounce_msgid=new_format_id(int(arrival + 1500), 4243, 1),
            **common,
        ),
    ]
    lines = [
        MessageLine(
            server, msgid, arrival, f'2025-11-26 01:00:00 {msgid} <= billing@acct00-shop.example T="{SCRIPT_PAYLOAD}"'
        ),
        MessageLine(server, msgid, arrival + 1500, f"2025-11-26 01:25:00 {msgid} ** {VICTIM}: {bounce}"),
    ]
    return events, lines


async def _prepare(store: FilledStore) -> str:
    client = Redis.from_url(store.redis_url)
    try:
        events, lines = hostile_message(store.now)
        await RedisWriter(client, StoreSettings(prefix=store.prefix)).write(events, lines)
        token, _ = await TokenStore(client, store.prefix + ":").create(operator=True, name="browser")
    finally:
        await client.aclose()
    return token


@pytest.fixture(scope="module")
def served(filled_store: FilledStore) -> Iterator[tuple[str, str]]:
    """(base URL, operator token) of the app served by uvicorn on a free loopback port, in a thread."""
    token = asyncio.run(_prepare(filled_store))
    app = create_app(filled_store.settings(stream_poll_seconds=0.2))
    with serve_in_thread(app) as base_url:
        yield base_url, token


@pytest.fixture
def page(served: tuple[str, str]) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1480, "height": 980}, device_scale_factor=1)
            yield context.new_page()
        finally:
            browser.close()


def test_search_open_a_bounce_and_payloads_stay_inert(page: Page, served: tuple[str, str], tmp_path: Path) -> None:
    base_url, token = served
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    console_errors: list[str] = []
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    page.goto(f"{base_url}/#token={token}")
    expect(page.locator("#results-body tr").first).to_be_visible()
    assert "token" not in page.url  # the fragment is dropped once read

    page.fill("#f-recipient", VICTIM)
    page.click("#search")
    rows = page.locator("#results-body tr")
    expect(rows).to_have_count(3)
    expect(rows.first.locator(".badge")).to_have_text("Bounced")
    expect(rows.first.locator("td.result")).to_contain_text(IMG_PAYLOAD)  # shown as text

    rows.first.click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    recipient = detail.locator(".recipient").first
    expect(recipient).to_contain_text(VICTIM)
    expect(recipient.locator(".reason")).to_have_text("recipient_unknown")
    expect(recipient.locator(".hint")).to_contain_text(HINT)
    expect(recipient.locator(".retry-words")).to_contain_text("attempt 3")
    expect(recipient.locator(".timeline li")).to_have_count(3)
    expect(recipient.locator(".route svg text").filter(has_text="142.250.102.27")).to_have_count(1)
    expect(detail.locator(".kv dd").filter(has_text=SCRIPT_PAYLOAD)).to_have_count(1)
    expect(detail.locator("pre.lines")).to_contain_text(IMG_PAYLOAD)

    page.screenshot(path=str(tmp_path / "track-delivery.png"), full_page=False)

    # the README picture: the same message open, in a fuller table (all of its sender's mail)
    bounced_id = rows.first.get_attribute("data-event")
    page.fill("#f-recipient", "")
    page.fill("#f-user", "acct00")
    page.click("#search")
    expect(page.locator("#results-body tr").nth(5)).to_be_visible()
    page.locator(f'#results-body tr[data-event="{bounced_id}"]').click()
    expect(detail.locator(".recipient .hint")).to_contain_text(HINT)
    (REPO_ROOT / "docs").mkdir(exist_ok=True)
    page.screenshot(path=str(REPO_ROOT / "docs" / "screenshot.png"), full_page=False)

    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0
    assert dialogs == []
    assert console_errors == []


def test_show_blocked_and_failed_and_the_column_chooser(page: Page, served: tuple[str, str]) -> None:
    base_url, token = served
    page.goto(f"{base_url}/#token={token}")
    expect(page.locator("#results-body tr").first).to_be_visible()
    page.click("#show-blocked")
    expect(page.locator("#totals .badge.bounced")).to_have_count(1)
    expect(page.locator("#totals .badge.delivered")).to_have_count(0)  # the new answer has arrived
    badges = page.locator("#results-body tr td:first-child .badge").all_text_contents()
    assert badges and set(badges) <= {"Bounced", "Expired", "Rejected"}

    page.click(".columns summary")
    page.check("#col-subject")
    expect(page.locator("#results-head th", has_text="Subject")).to_have_count(1)
    page.reload()  # the choice is remembered
    expect(page.locator("#results-head th", has_text="Subject")).to_have_count(1)
    expect(page.locator("#top-deferring li").first).to_be_visible()
    expect(page.locator("#chart svg rect").first).to_be_attached()


def test_without_a_token_the_page_asks_for_one(page: Page, served: tuple[str, str]) -> None:
    base_url, token = served
    page.goto(base_url)
    expect(page.locator("#token-dialog")).to_be_visible()
    page.fill("#token-input", token)
    page.click("#token-save")
    expect(page.locator("#results-body tr").first).to_be_visible()
    expect(page.locator("#results-body tr .badge").first).to_be_visible()


def test_live_mode_shows_new_events_as_they_land(
    page: Page, served: tuple[str, str], filled_store: FilledStore
) -> None:
    base_url, token = served
    page.goto(f"{base_url}/#token={token}")
    expect(page.locator("#results-body tr").first).to_be_visible()
    page.fill("#f-recipient", "live.check@example.org")
    page.click("#search")
    expect(page.locator("#results-body td[colspan]")).to_have_text("No events match.")
    page.check("#live")
    expect(page.locator("#live-status")).to_have_text("live")  # connected (the tail also backfills 10 s)

    events, _ = hostile_message(time.time())
    arriving = dataclasses.replace(events[-1], recipient="live.check@example.org", time=time.time(), event_id="")

    async def write() -> None:
        client = Redis.from_url(filled_store.redis_url)
        try:
            await RedisWriter(client, StoreSettings(prefix=filled_store.prefix)).write([arriving])
        finally:
            await client.aclose()

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's event loop
        pool.submit(asyncio.run, write()).result()
    row = page.locator(f'#results-body tr[data-event="{arriving.event_id}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator(".badge")).to_have_text("Bounced")
    assert page.evaluate("typeof window.__xss") == "undefined"
    page.uncheck("#live")
    expect(page.locator("#live-status")).to_have_text("")


def hostile_alerts(now: float) -> list[dict[str, object]]:
    """A firing alert with payloads in its scope, summary, hint and example (the example is the hostile bounce,
    so it opens that message), and a resolved alert."""
    events, _ = hostile_message(now)
    bounced = events[-1]
    firing = alert(
        rule="provider_throttling",
        kind=RuleKind.PROVIDER_BLOCK,
        severity=Severity.CRITICAL,
        scope={"server": bounced.server, "user": IMG_PAYLOAD},
        last_seen=now - 60,
        count=39,
        summary=f"39 of 192 deliveries (20%) refused {SCRIPT_PAYLOAD} in 1 h",
        hint=f"Find what this server sent to {IMG_PAYLOAD} in the last hour.",
        examples=[
            example(
                time=bounced.time,
                server=bounced.server,
                msgid=bounced.msgid,
                sender=bounced.sender,
                recipient=VICTIM,
                cpanel_user="acct00",
                type="bounced",
                reason="recipient_unknown",
                response=bounced.response,
            )
        ],
    )
    resolved = alert(
        rule="frozen_messages",
        kind=RuleKind.FROZEN,
        state=AlertState.RESOLVED,
        scope={"server": bounced.server},
        last_seen=now - 3600,
        summary="12 messages frozen in the queue",
    )
    return [firing, resolved]


def test_the_alerts_panel_shows_firing_alerts_and_payloads_stay_inert(
    page: Page, served: tuple[str, str], filled_store: FilledStore, tmp_path: Path
) -> None:
    base_url, token = served
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    console_errors: list[str] = []
    page.on("pageerror", lambda error: console_errors.append(str(error)))

    def run(coroutine: object) -> None:
        with ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's event loop
            pool.submit(asyncio.run, coroutine).result()  # type: ignore[arg-type]

    run(clear_alerts(filled_store.redis_url, filled_store.prefix))
    try:
        page.clock.install()  # the panel refreshes every 30 s: the test moves the page's clock instead of waiting
        page.goto(f"{base_url}/#token={token}")
        alerts = page.locator("#alerts-list")
        expect(alerts.locator("li.empty")).to_have_text("No active alerts")

        records = hostile_alerts(filled_store.now)
        firing = records[0]
        run(put_alerts(filled_store.redis_url, filled_store.prefix, records))
        page.clock.fast_forward(31_000)
        item = alerts.locator("li.alert")
        expect(item).to_have_count(1)
        expect(item).to_have_attribute("data-alert", str(firing["id"]))
        expect(page.locator("#alerts-count")).to_have_text("(1 firing)")
        expect(item.locator(".badge.sev-critical")).to_have_text("critical")
        expect(item.locator(".alert-rule")).to_have_text("provider_throttling")
        expect(item.locator(".alert-summary")).to_have_text(str(firing["summary"]))  # the payload, as text
        expect(item.locator(".alert-scope")).to_have_text(f"server cp0.example-hosting.net · user {IMG_PAYLOAD}")
        expect(item.locator(".alert-count")).to_have_text("39×")
        expect(item.locator(".alert-since")).to_contain_text("for ")

        hint = item.locator(".hint")
        expect(hint).to_be_hidden()
        item.locator("summary").click()
        expect(hint).to_be_visible()
        expect(hint).to_contain_text(str(firing["hint"]))
        sample = item.locator(".alert-example")
        expect(sample).to_have_count(1)
        expect(sample.locator(".resp")).to_contain_text(IMG_PAYLOAD)
        expect(sample).to_contain_text(VICTIM)

        page.clock.fast_forward(31_000)  # a refresh keeps the open alert open
        expect(page.locator("#alerts-status")).to_contain_text("updated")
        expect(hint).to_be_visible()

        example_record = firing["examples"][0]  # type: ignore[index]
        sample.locator("button.open-message").click()
        detail = page.locator("#detail")
        expect(detail).to_be_visible()
        expect(page.locator("#detail-title")).to_have_text(f"{example_record['msgid']} on {example_record['server']}")
        expect(detail.locator(".recipient").first).to_contain_text(VICTIM)
        expect(detail.locator(".recipient .hint").first).to_contain_text(HINT)

        page.check("#alerts-resolved")
        expect(alerts.locator("li.alert")).to_have_count(2)
        resolved = alerts.locator("li.alert.resolved")
        expect(resolved).to_have_count(1)
        expect(resolved.locator(".alert-summary")).to_have_text("12 messages frozen in the queue")
        expect(resolved.locator(".state-resolved")).to_have_text("resolved")
        page.uncheck("#alerts-resolved")
        expect(alerts.locator("li.alert")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "alerts.png"), full_page=False)

        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0
        assert dialogs == []
        assert console_errors == []
    finally:
        run(clear_alerts(filled_store.redis_url, filled_store.prefix))
