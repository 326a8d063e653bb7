"""What a peer's request means: one REQUEST frame in, the answer's payload out.

Block I/O goes to the :class:`~storaged.remote.api.Volume` the array's
:class:`~storaged.remote.api.LinkHandler` resolves, control calls to ``handler.call``; failures
are raised (the server turns them into a status). Kept apart from the connection so what the
link serves can be read, and changed, without the byte moving around it.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..origin import ORIGIN, via_peer
from .api import LinkHandler, RemoteError, Volume
from .protocol import (
    DATA_OPCODES,
    FLAG_FUA,
    Buffer,
    Frame,
    Opcode,
    Status,
    decode_data_request,
    decode_json,
    encode_caw_result,
    encode_extents,
    encode_json,
)


def resolve_volume(handler: LinkHandler, peer: str, target: str, lun: int) -> Volume:
    vol = handler.volume(peer, target, lun)
    if vol is None:
        raise RemoteError(Status.NOT_FOUND, f"no volume {target!r} LUN {lun}")
    return vol


async def dispatch(handler: LinkHandler, peer: str, frame: Frame) -> Buffer | Sequence[Buffer]:
    """Run one request from ``peer`` in this task; ORIGIN is set here so only this request sees it."""
    op = frame.opcode
    if op in DATA_OPCODES:
        req = decode_data_request(op, frame.payload)
        ORIGIN.set(via_peer(peer, req.origin))
        vol = resolve_volume(handler, peer, req.target, req.lun)
        if op != Opcode.FLUSH and req.offset + req.length > vol.info.size:
            raise RemoteError(Status.BAD_REQUEST, f"range {req.offset}+{req.length} beyond the end of "
                              f"the volume ({vol.info.size} bytes)")
        fua = bool(frame.flags & FLAG_FUA)
        if op == Opcode.READ:
            data = await vol.read(req.offset, req.length)
            if len(data) != req.length:
                raise RemoteError(Status.INTERNAL, f"volume returned {len(data)} of {req.length} bytes")
            return data
        if op == Opcode.WRITE:
            await vol.write(req.offset, req.data, fua)
        elif op == Opcode.FLUSH:
            await vol.flush()
        elif op == Opcode.UNMAP:
            await vol.unmap(req.offset, req.length)
        elif op == Opcode.WRITE_ZEROES:
            await vol.write_zeroes(req.offset, req.length)
        elif op == Opcode.EXTENTS:
            return encode_extents(await vol.extents(req.offset, req.length))
        elif op == Opcode.COMPARE_AND_WRITE:
            return encode_caw_result(await vol.compare_and_write(req.offset, req.expected, req.new_data, fua))
        return b""
    if op == Opcode.OPEN_VOLUME:
        body = decode_json(frame.payload)
        target, lun = body.get("target"), body.get("lun")
        if not isinstance(target, str) or not isinstance(lun, int) or isinstance(lun, bool):
            raise RemoteError(Status.BAD_REQUEST, "OPEN_VOLUME needs {target: str, lun: int}")
        ORIGIN.set(via_peer(peer, str(body.get("origin") or "")))
        return encode_json(resolve_volume(handler, peer, target, lun).info.to_dict())
    if op == Opcode.CALL:
        body = decode_json(frame.payload)
        method, params, origin = body.get("method"), body.get("params", {}), body.get("origin", "")
        if not isinstance(method, str) or not isinstance(params, dict) or not isinstance(origin, str):
            raise RemoteError(Status.BAD_REQUEST, "CALL needs {method: str, params: object}")
        ORIGIN.set(via_peer(peer, origin))
        result = await handler.call(peer, method, params)
        if not isinstance(result, dict):
            raise RemoteError(Status.INTERNAL, f"{method} returned {type(result).__name__}, not an object")
        return encode_json(result)
    raise RemoteError(Status.BAD_REQUEST, f"unknown opcode {op}")
