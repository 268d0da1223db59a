"""``/healthz``: no token; 200 when every check is ok, 503 otherwise."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cloud.api.deps import Ctx

router = APIRouter()


@router.get("/healthz")
async def healthz(ctx: Ctx) -> JSONResponse:
    body = await ctx.health()
    return JSONResponse(body, status_code=200 if body.get("status") == "ok" else 503)
