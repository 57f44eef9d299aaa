"""The query service application: ``create_app(settings)`` builds the FastAPI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from query_service.alerts import UnreadableAlerts
from query_service.filters import FilterError
from query_service.metrics import MetricsMiddleware, RequestMetrics
from query_service.responses import OrjsonResponse
from query_service.settings import QueryServiceSettings
from query_service.tokens import TokenStore
from trackdelivery import connections
from trackdelivery.connections import AsyncRedisClient
from trackdelivery.store import InvalidCursor, StoreError, StoreSettings

STATIC_DIR = Path(__file__).parent / "static"

#: The page loads only its own script and style; log strings can never become markup or script.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def store_settings(settings: QueryServiceSettings) -> StoreSettings:
    return StoreSettings(prefix=settings.key_prefix) if settings.key_prefix else StoreSettings()


def store_prefix(settings: QueryServiceSettings) -> str:
    return store_settings(settings).prefix + ":"


def redis_client(settings: QueryServiceSettings) -> AsyncRedisClient:
    """The query store's client (a ``RedisCluster`` with ``REDIS_CLUSTER=true``), with the service's timeouts."""
    return connections.redis_client(
        settings.redis_settings(), timeout=settings.redis_timeout_seconds, health_check_interval=30
    )


def create_app(settings: QueryServiceSettings | None = None) -> FastAPI:
    settings = settings or QueryServiceSettings()
    store = store_settings(settings)
    metrics = RequestMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from processors.alerts.store import AlertStore
        from query_service.search import DeliverySearch

        client = redis_client(settings)
        app.state.redis = client
        app.state.search = DeliverySearch(client, store)
        app.state.alerts = AlertStore(client, store.prefix)
        app.state.tokens = TokenStore(client, store.prefix + ":")
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(
        title="trackdelivery query service",
        version="1",
        summary="Fleet-wide Track Delivery for Exim: search delivery events, inspect messages, stats, live tail.",
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.settings = settings
    app.state.store_settings = store
    app.state.metrics = metrics

    from query_service.api import router

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(FilterError)
    async def filter_error(_request: Request, error: FilterError) -> Response:
        return OrjsonResponse({"detail": error.detail()}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, error: StoreError) -> Response:
        # InvalidQuery / InvalidCursor: the client's fault, said plainly.
        loc = ["query", "cursor"] if isinstance(error, InvalidCursor) else ["query"]
        return OrjsonResponse({"detail": [{"loc": loc, "msg": str(error)[:300], "type": "value_error"}]}, 422)

    @app.exception_handler(UnreadableAlerts)
    async def unreadable_alerts(_request: Request, _error: UnreadableAlerts) -> Response:
        return OrjsonResponse({"detail": "the alert store holds an unreadable record"}, status_code=503)

    @app.exception_handler(RedisError)
    async def redis_error(_request: Request, _error: RedisError) -> Response:
        return OrjsonResponse({"detail": "the query store is unavailable"}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> Response:
        problems = [
            {"loc": list(item.get("loc", ())), "msg": str(item.get("msg", ""))[:300], "type": item.get("type")}
            for item in error.errors()
        ]
        return OrjsonResponse({"detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> Response:
        return OrjsonResponse({"detail": error.detail}, status_code=error.status_code, headers=error.headers)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        response = FileResponse(STATIC_DIR / "index.html", media_type="text/html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        try:
            await request.app.state.redis.ping()
        except (RedisError, OSError):
            return PlainTextResponse("redis unreachable", status_code=503)
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return app
