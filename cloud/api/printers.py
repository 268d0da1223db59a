"""``/v1/printers``: printers on their hosts, their BLE side, and clearing their queue."""

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.bridges import bridges_of
from cloud.api.deps import Admin, Ctx, PrintScope, Read, host
from cloud.api.devices import PrinterBody
from cloud.bridges import PrinterBle
from cloud.registry import printer_view

router = APIRouter()


class PrinterIn(PrinterBody):
    device: str


class PrinterBleIn(BaseModel):
    """Only the fields present change; ``null`` clears one."""

    model_config = ConfigDict(extra="forbid", strict=True)
    ble_address: str | None = None
    ble_name: str | None = None
    ble_profile: str | None = None
    public_key: str | None = None
    identity: Literal["required", "preferred", "off"] = "preferred"
    latency_threshold_ms: int | None = None
    unique_id: str = Field(default="", max_length=64)


@router.get("/v1/printers")
async def list_printers(_t: Read, ctx: Ctx) -> list[dict[str, Any]]:
    return [printer_view(p) for p in await ctx.registry.list_printers()]


@router.get("/v1/printers/{name}")
async def get_printer(name: str, _t: Read, ctx: Ctx) -> dict[str, Any]:
    return printer_view(await ctx.registry.get_printer(name))


@router.post("/v1/printers", status_code=201)
async def add_printer(body: PrinterIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    await host(ctx, body.device)
    printer = await ctx.registry.add_printer(body.device, body.printer_input())
    await ctx.controller.push_config(body.device)
    return printer_view(printer)


@router.delete("/v1/printers/{name}")
async def remove_printer(name: str, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    device = await ctx.registry.remove_printer(name)
    await ctx.controller.printers_removed([name])
    await ctx.controller.push_config(device)
    return {"removed": name, "device": device}


@router.post("/v1/printers/{name}/clear")
async def clear_printer(name: str, tok: PrintScope, ctx: Ctx) -> dict[str, Any]:
    """Cancel every job of a printer that has not started printing."""
    await ctx.registry.get_printer(name)
    results = [
        await ctx.controller.cancel_job(job.id, f"api:{tok.name}")
        for job in await ctx.jobs.open_jobs_for_printers([name])
    ]
    return {
        "printer": name,
        "cancelled": sum(1 for r in results if r["cancelled"]),
        "requested": sum(1 for r in results if not r["cancelled"] and r["state"] not in ("printing",)),
        "jobs": results,
    }


@router.patch("/v1/printers/{name}/ble")
async def set_printer_ble(name: str, body: PrinterBleIn, _t: Admin, ctx: Ctx) -> dict[str, Any]:
    given = {k: getattr(body, k) for k in body.model_fields_set}
    printer = await bridges_of(ctx).set_printer_ble(name, PrinterBle(**given))
    return printer_view(await ctx.registry.get_printer(printer.name))
