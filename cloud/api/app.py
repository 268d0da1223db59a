"""The app factory: error mapping, the body limit and audit middleware, and every router."""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cloud.api.bridges import router as bridges_router
from cloud.api.commands import router as commands_router
from cloud.api.context import ApiContext
from cloud.api.devices import router as devices_router
from cloud.api.enrol import router as enrol_router
from cloud.api.health import router as health_router
from cloud.api.jobs import router as jobs_router
from cloud.api.maintenance import router as maintenance_router
from cloud.api.printers import router as printers_router
from cloud.api.tokens import router as tokens_router
from cloud.errors import ControllerError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 6 * 1024 * 1024


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="printfleet", version="1", docs_url="/docs", redoc_url=None)
    app.state.ctx = ctx

    @app.exception_handler(ControllerError)
    async def _controller_error(_req: Request, exc: ControllerError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"error": f"{loc}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.middleware("http")
    async def _limit_and_audit(request: Request, call_next: Callable[[Request], Awaitable[Any]]) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        response = await call_next(request)
        # every change, and every refused request, is recorded with who asked
        if request.method != "GET" or response.status_code in (401, 403):
            actor = getattr(request.state, "actor", None) or "anonymous"
            outcome = (
                "ok"
                if response.status_code < 400
                else ("denied" if response.status_code in (401, 403) else "error")
            )
            await ctx.audit.record(
                f"api:{actor}",
                f"{request.method} {request.url.path}",
                request.client.host if request.client else None,
                outcome=outcome,
                detail=f"HTTP {response.status_code}",
            )
        return response

    for router in (
        health_router,
        devices_router,
        enrol_router,
        printers_router,
        bridges_router,
        jobs_router,
        commands_router,
        tokens_router,
    ):
        app.include_router(router)
    if ctx.maintenance is not None:
        app.include_router(maintenance_router)
    return app
