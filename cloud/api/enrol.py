"""``POST /v1/enroll``: a host or bridge trades its one-time enrolment token for its config."""

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import Ctx

router = APIRouter()


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    token: str = Field(min_length=8, max_length=128)
    #: What the caller enrols; a token for the other kind is refused and stays unused.
    kind: Literal["device", "bridge"] | None = None


@router.post("/v1/enroll")
async def enroll(body: EnrollIn, request: Request, ctx: Ctx) -> dict[str, Any]:
    """No bearer token: the one-time enrolment token is the credential."""
    device, secret = await ctx.registry.redeem_enrollment(body.token, body.kind)
    request.state.actor = f"enroll:{device}"
    await ctx.credentials_changed()
    if (await ctx.registry.get_device(device)).kind == "bridge" and ctx.bridge_config is not None:
        return {"bridge": device, "bridge_config": ctx.bridge_config(device, secret)}
    return {"device": device, "agent_config": ctx.agent_config(device, secret)}
