"""``trackdelivery serve|search|show|tail|tokens``.

``search``, ``show`` and ``tail`` talk to the HTTP API (``--url``/``TRACKDELIVERY_URL``,
``--token``/``TRACKDELIVERY_TOKEN``); ``tokens`` talks to Redis directly; ``serve`` runs the API.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
import orjson

from query_service.client import ApiClient, ApiError
from query_service.settings import QueryServiceSettings
from trackdelivery.settings import redact_url

TYPE_STYLES = {
    "delivered": "green",
    "deferred": "yellow",
    "bounced": "red",
    "expired": "dark_red",
    "rejected": "magenta",
    "filtered": "bright_black",
    "archived": "blue",
    "in_progress": "cyan",
    "frozen": "steel_blue",
    "cancelled": "orange4",
}

_FILTER_OPTIONS: list[tuple[str, str]] = [
    ("sender", "envelope sender"),
    ("recipient", "recipient (or original recipient)"),
    ("address", "sender or recipient address"),
    ("domain", "sender or recipient domain"),
    ("server", "mail server name"),
    ("user", "sender's cPanel user"),
    ("msgid", "Exim message id"),
    ("ip", "client or remote IP"),
    ("reason", "reason category, e.g. mailbox_full"),
    ("text", "text in the response or subject"),
    ("since", "ISO-8601 or epoch seconds"),
    ("until", "ISO-8601 or epoch seconds"),
]


def _api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--token", envvar="TRACKDELIVERY_TOKEN", help="bearer token [env TRACKDELIVERY_TOKEN]")(
        command
    )
    command = click.option(
        "--url",
        envvar="TRACKDELIVERY_URL",
        default="http://127.0.0.1:8080",
        show_default=True,
        help="query service URL [env TRACKDELIVERY_URL]",
    )(command)
    return command


def _filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for name, help_text in reversed(_FILTER_OPTIONS):
        command = click.option(f"--{name}", help=help_text)(command)
    command = click.option("--type", "types", multiple=True, help="event type (repeatable or comma separated)")(command)
    command = click.option("--period", type=click.Choice(["last_hour", "last_day", "last_week"]))(command)
    command = click.option(
        "--blocked-and-failed", is_flag=True, help="only bounced, expired and rejected (cPanel's Show Blocked & Failed)"
    )(command)
    return command


def _filter_params(values: dict[str, Any]) -> list[tuple[str, str]]:
    params = [(name, str(values[name])) for name, _ in _FILTER_OPTIONS if values.get(name)]
    params += [("type", t) for t in values.get("types") or ()]
    if values.get("period"):
        params.append(("period", values["period"]))
    if values.get("blocked_and_failed"):
        params.append(("blocked_and_failed", "true"))
    return params


def _client(url: str, token: str | None) -> ApiClient:
    try:
        return ApiClient(url, token)
    except ApiError as error:
        raise click.ClickException(error.message) from None


def _fail(error: ApiError) -> click.ClickException:
    return click.ClickException(str(error))


def _time(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S") if epoch else ""


def _short(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch)
    same_day = moment.date() == datetime.now().date()
    return moment.strftime("%H:%M") if same_day else moment.strftime("%a %H:%M")


def _result(event: dict[str, Any]) -> str:
    if event.get("response"):
        return str(event["response"])
    return {"delivered": "Accepted", "in_progress": "In progress"}.get(event["type"], event["type"])


def _host_ip(host: str | None, ip: str | None) -> str:
    return " ".join(p for p in (host or "", f"[{ip}]" if ip else "") if p)


def _events_table(events: list[dict[str, Any]], title: str | None = None) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False, header_style="bold", expand=False)
    for column in ("Event", "Time", "Sender", "Recipient", "Result", "Server", "Delivery host/IP", "Reason"):
        table.add_column(column, overflow="fold", max_width=60 if column == "Result" else None)
    for event in events:
        sender = "<>" if event.get("sender") == "" else event.get("sender") or ""
        # Text() never interprets rich markup: log strings stay literal.
        table.add_row(
            Text(event["type"], style=TYPE_STYLES.get(event["type"], "")),
            Text(_time(event.get("time"))),
            Text(sender),
            Text(event.get("recipient") or ""),
            Text(_result(event)[:300]),
            Text(event.get("server") or ""),
            Text(_host_ip(event.get("remote_host"), event.get("remote_ip"))),
            Text(event.get("reason") or ""),
        )
    return table


def _console() -> Any:
    """A rich console; when piped (no terminal, no COLUMNS) wide enough for the table not to fold."""
    import os

    from rich.console import Console

    wide = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200
    return Console(highlight=False, width=wide)


def _write_json(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data) + b"\n")
    sys.stdout.flush()


@click.command()
@_api_options
@_filter_options
@click.option("--max-results-by-type", type=click.IntRange(1, 5000), help="cPanel's per-type cap (default 250)")
@click.option("--limit", type=click.IntRange(1, 5000), help="page size instead of the per-type cap")
@click.option("--cursor", help="continue from the next_cursor of a previous page")
@click.option("--json", "as_json", is_flag=True, help="print the API answer as JSON")
def search(url: str, token: str | None, as_json: bool, **values: Any) -> None:
    """Find delivery events across the fleet, newest first."""
    params = _filter_params(values)
    for name in ("max_results_by_type", "limit", "cursor"):
        if values.get(name):
            params.append((name, str(values[name])))
    try:
        answer = _client(url, token).get("/api/v1/deliveries", params)
    except ApiError as error:
        raise _fail(error) from None
    if as_json:
        _write_json(answer)
        return
    console = _console()
    console.print(_events_table(answer["events"]))
    totals = ", ".join(f"{kind} {count}" for kind, count in sorted(answer["totals"].items()) if count)
    console.print(f"{answer['returned']} shown of {answer['total']} matching ({totals or 'none'})", highlight=False)
    if answer.get("overflowed"):
        console.print("[bold red]overflowed:[/] more events match than are shown", highlight=False)
    if answer.get("next_cursor"):
        page_size = values.get("limit") or ""
        console.print(f"next page: --limit {page_size} --cursor {answer['next_cursor']}", highlight=False)


def retry_words(retry: dict[str, Any], expected: int | None, final: bool) -> str:
    parts = []
    if retry.get("attempt"):
        parts.append(f"attempt {retry['attempt']} of about {expected}" if expected else f"attempt {retry['attempt']}")
    if not final and retry.get("next_retry"):
        parts.append(f"next try ≈ {_short(retry['next_retry'])}")
    if not final and retry.get("give_up"):
        parts.append(f"gives up {_short(retry['give_up'])}")
    return "; ".join(parts)


@click.command()
@_api_options
@click.argument("server")
@click.argument("msgid")
@click.option("--json", "as_json", is_flag=True, help="print the API answer as JSON")
def show(url: str, token: str | None, server: str, msgid: str, as_json: bool) -> None:
    """Show one message: arrival, every recipient's attempts, the route, the log lines and the fix hint."""
    from urllib.parse import quote

    try:
        view = _client(url, token).get(f"/api/v1/messages/{quote(server, safe='')}/{quote(msgid, safe='')}")
    except ApiError as error:
        if error.status == 404:
            raise click.ClickException(f"no message {msgid} on {server} (or not in your scope)") from None
        raise _fail(error) from None
    if as_json:
        _write_json(view)
        return
    from rich.text import Text

    console = _console()
    arrival = view.get("arrival") or {}
    console.print(Text(f"{view['msgid']} on {view['server']}", style="bold"))
    for label, value in (
        ("received", _time(arrival.get("time"))),
        ("sender", "<>" if arrival.get("sender") == "" else arrival.get("sender")),
        ("subject", arrival.get("subject")),
        ("user", arrival.get("cpanel_user")),
        ("client", _host_ip(arrival.get("client_host"), arrival.get("client_ip"))),
        ("size", arrival.get("size")),
        ("bounce message", view.get("bounce_msgid")),
        ("bounce of", view.get("parent_msgid")),
    ):
        if value not in (None, ""):
            console.print(Text(f"  {label:<15}{value}"))
    for recipient in view["recipients"]:
        console.print()
        head = Text("  ")
        head.append(recipient["state"], style=f"bold {TYPE_STYLES.get(recipient['state'], '')}")
        head.append(f"  {recipient.get('recipient') or ''}")
        if recipient.get("reason"):
            head.append(f"  ({recipient['reason']})", style="dim")
        console.print(head)
        final = recipient["state"] not in ("deferred", "in_progress", "frozen")
        words = retry_words(recipient.get("retry") or {}, recipient.get("expected_attempts"), final)
        if words:
            console.print(Text(f"    {words}"))
        route = recipient.get("route") or {}
        trace = " → ".join(
            part
            for part in (
                _host_ip(route.get("client_host"), route.get("client_ip")) or "local",
                route.get("server") or "",
                "/".join(p for p in (route.get("router"), route.get("transport")) if p),
                _host_ip(route.get("remote_host"), route.get("remote_ip")),
                " ".join(str(p) for p in (route.get("smtp_code"), route.get("enhanced_code")) if p) or route["outcome"],
            )
            if part
        )
        console.print(Text(f"    route: {trace}", style="dim"))
        if recipient.get("hint"):
            console.print(Text(f"    fix: {recipient['hint']}", style="green"))
        for attempt in recipient["attempts"]:
            line = Text(f"    {_time(attempt['time'])}  ")
            line.append(f"{attempt['type']:<11}", style=TYPE_STYLES.get(attempt["type"], ""))
            line.append(f" {_result(attempt)[:300]}")
            console.print(line)
    console.print()
    console.print(Text("log lines:", style="bold"))
    for line in view.get("lines") or []:
        console.print(Text(f"  {line}"), soft_wrap=True)


@click.command()
@_api_options
@_filter_options
@click.option("--json", "as_json", is_flag=True, help="one JSON event per line")
def tail(url: str, token: str | None, as_json: bool, **values: Any) -> None:
    """Follow new delivery events live (server-sent events) until interrupted."""
    params = [(k, v) for k, v in _filter_params(values) if k not in ("period", "since", "until")]
    from rich.text import Text

    console = _console()
    try:
        for event in _client(url, token).stream("/api/v1/stream", params):
            if as_json:
                _write_json(event)
                continue
            line = Text(f"{_time(event.get('time'))} ")
            line.append(f"{event['type']:<11}", style=TYPE_STYLES.get(event["type"], ""))
            line.append(f" {event.get('server') or ''} {event.get('msgid') or '-'} ")
            line.append(f"{event.get('sender') or '<>'} → {event.get('recipient') or ''}  {_result(event)[:200]}")
            console.print(line)
    except ApiError as error:
        raise _fail(error) from None
    except KeyboardInterrupt:
        pass


@click.command()
@click.option("--host", envvar="TRACKDELIVERY_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="TRACKDELIVERY_PORT", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--redis-url", envvar="REDIS_URL", help="Redis of the query store [env REDIS_URL]")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str, port: int, redis_url: str | None, log_level: str) -> None:
    """Run the HTTP API and the web page."""
    import uvicorn

    from query_service.app import create_app

    settings = QueryServiceSettings(host=host, port=port)
    if redis_url:
        settings = settings.model_copy(update={"redis_url": redis_url})
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, proxy_headers=False)


@click.group()
@click.option("--redis-url", envvar="REDIS_URL", help="Redis of the query store [env REDIS_URL]")
@click.pass_context
def tokens(ctx: click.Context, redis_url: str | None) -> None:
    """Create, list and revoke API tokens (stored hashed in Redis)."""
    ctx.obj = QueryServiceSettings(redis_url=redis_url) if redis_url else QueryServiceSettings()


def _run_with_tokens(settings: QueryServiceSettings, action: Callable[[Any], Any]) -> Any:
    from query_service.app import redis_client, store_prefix
    from query_service.tokens import TokenStore

    async def run() -> Any:
        client = redis_client(settings)
        try:
            return await action(TokenStore(client, store_prefix(settings)))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except OSError as error:
        raise click.ClickException(f"cannot reach Redis at {redact_url(settings.redis_url)}: {error}") from None


@tokens.command("create")
@click.option("--operator", is_flag=True, help="sees the whole fleet")
@click.option("--user", "users", multiple=True, help="cPanel user this token is confined to (repeatable)")
@click.option("--domain", "domains", multiple=True, help="domain this token is confined to (repeatable)")
@click.option("--name", default="", help="a note saying who holds it")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tokens_create(
    settings: QueryServiceSettings,
    operator: bool,
    users: tuple[str, ...],
    domains: tuple[str, ...],
    name: str,
    as_json: bool,
) -> None:
    """Create a token and print it once (it is not stored, only its hash)."""
    from query_service.tokens import TokenError

    try:
        token, record = _run_with_tokens(
            settings, lambda store: store.create(operator=operator, users=users, domains=domains, name=name)
        )
    except TokenError as error:
        raise click.UsageError(str(error)) from None
    if as_json:
        _write_json({"token": token, **record.describe()})
        return
    click.echo(token)
    click.echo(f"id {record.token_id}  {record.describe()['kind']}  (shown once: keep it safe)", err=True)


@tokens.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def tokens_list(settings: QueryServiceSettings, as_json: bool) -> None:
    """List tokens (ids and scopes, never the secrets)."""
    records = _run_with_tokens(settings, lambda store: store.list())
    if as_json:
        _write_json([r.describe() for r in records])
        return
    if not records:
        click.echo("no tokens (create one with: trackdelivery tokens create --operator)")
    for record in records:
        info = record.describe()
        scope = (
            "all"
            if record.operator
            else " ".join([f"user={u}" for u in info["users"]] + [f"domain={d}" for d in info["domains"]])
        )
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
        click.echo(f"{record.token_id}  {info['kind']:<8}  {created}  {scope}  {record.name}")


@tokens.command("revoke")
@click.argument("token_id")
@click.pass_obj
def tokens_revoke(settings: QueryServiceSettings, token_id: str) -> None:
    """Revoke a token by its id (takes effect on the next request)."""
    if not _run_with_tokens(settings, lambda store: store.revoke(token_id)):
        raise click.ClickException(f"no token with id {token_id}")
    click.echo(f"revoked {token_id}")
