"""How the node's process and a media worker talk: the message format and one link.

Each worker has two socketpairs with the node's process:

* a stream socket for messages. Every message is ``length`` (u32, big-endian: the bytes that
  follow, at most `MAX_MESSAGE`), ``kind`` (u8) and its body:

  - kind 1, control: a UTF-8 JSON object. A request carries ``"id"`` (an integer) and
    ``"op"``; its answer is ``{"re": id, ...}`` with ``"error"`` (a string) if it failed.
    An event carries ``"ev"`` and needs no answer.
  - kind 2, frames: access units of one stream, sent only while the node's process has a
    consumer that wants them (``tap``). Body: the stream number (u32) and the unit count (u16),
    then per unit the header `UNIT_HEAD` (stream_id u8, codec index u8, PTS and DTS i64 with
    -1 for none, keyframe u8, len(data) u32, len(ps_bytes) u32, offset u64), then the data and
    PS bytes of every unit in order.

* a SOCK_SEQPACKET socket that carries bound sockets (a stream's RTP port, bound by the
  node's port pool) as SCM_RIGHTS, each message the 8-byte token a control request names.

The JSON requests and events are documented in `sensing_node.media.workers` (see its docstring).
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from rtp.ps import AccessUnit

log = logging.getLogger(__name__)

#: the largest message either side accepts: a frames message holds at most a few units of
#: at most 8 MiB of elementary data each (rtp.ps.MAX_BUFFERED) and their PS bytes
MAX_MESSAGE = 64 * 1024 * 1024
#: frames waiting in a link's write buffer past which more frames are dropped (control
#: messages never are): a reader that cannot keep up loses frames, not memory
MAX_FRAMES_BACKLOG = 32 * 1024 * 1024

CONTROL = 1
FRAMES = 2

_HEAD = struct.Struct("!IB")
_FRAMES_HEAD = struct.Struct("!IH")
UNIT_HEAD = struct.Struct("!BBqqBIIQ")
CODECS = ("unknown", "h264", "h265", "mpeg4", "g711a", "g711u", "aac", "svac", "mpeg2")
_CODEC_INDEX = {name: i for i, name in enumerate(CODECS)}


class WireError(Exception):
    """A message that breaks the format: the link is closed."""


class RemoteError(Exception):
    """The other side answered a request with an error."""


def encode_control(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEAD.pack(len(body) + 1, CONTROL) + body


def encode_frames(stream: int, units: list[AccessUnit]) -> list[bytes]:
    """One frames message as a list of buffers (for `writelines`, no joined copy)."""
    heads = [_FRAMES_HEAD.pack(stream, len(units))]
    bodies: list[bytes] = []
    size = _FRAMES_HEAD.size
    for unit in units:
        data, ps = unit.data, unit.ps_bytes
        heads.append(UNIT_HEAD.pack(
            unit.stream_id, _CODEC_INDEX.get(unit.codec, 0),
            -1 if unit.pts is None else unit.pts, -1 if unit.dts is None else unit.dts,
            unit.keyframe, len(data), len(ps), unit.offset,
        ))
        bodies.append(data)
        bodies.append(ps)
        size += UNIT_HEAD.size + len(data) + len(ps)
    return [_HEAD.pack(size + 1, FRAMES), *heads, *bodies]


def decode_frames(body: bytes) -> tuple[int, list[AccessUnit]]:
    """The stream number and units of a frames message; `WireError` if it does not add up."""
    try:
        stream, count = _FRAMES_HEAD.unpack_from(body, 0)
        pos = _FRAMES_HEAD.size
        heads = []
        for _ in range(count):
            heads.append(UNIT_HEAD.unpack_from(body, pos))
            pos += UNIT_HEAD.size
    except struct.error as exc:
        raise WireError(f"frames message cut short: {exc}") from None
    view = memoryview(body)
    units = []
    for sid, codec, pts, dts, key, n_data, n_ps, offset in heads:
        if pos + n_data + n_ps > len(body) or codec >= len(CODECS):
            raise WireError("frames message: a unit runs past the message")
        data = bytes(view[pos:pos + n_data])
        pos += n_data
        ps = bytes(view[pos:pos + n_ps])
        pos += n_ps
        units.append(AccessUnit(sid, CODECS[codec], None if pts < 0 else pts,
                                None if dts < 0 else dts, bool(key), data, ps, offset))
    if pos != len(body):
        raise WireError("frames message: bytes left over")
    return stream, units


class Link:
    """One end of the message socket: requests with answers, events, frames.

    `on_control(message)` gets every request and event (a request is answered with what it
    returns, or an error if it raises); `on_frames(stream, units)` every frames message.
    `closed` is done when the socket is (EOF, an error, a broken message, `close`).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_control: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None] | None],
        on_frames: Callable[[int, list[AccessUnit]], None],
        *,
        name: str = "link",
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_control = on_control
        self.on_frames = on_frames
        self.name = name
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.frames_dropped = 0
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reading = asyncio.create_task(self._read(), name=f"{name} reader")

    # ----- sending -----
    def send(self, message: dict[str, Any]) -> None:
        """An event (or an answer): queued, never dropped; ignored once the link is closed."""
        if not self.closed.done():
            self.writer.write(encode_control(message))

    async def request(self, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send a request and return its answer; `RemoteError` if it failed, `ConnectionError`
        if the link closes first, `TimeoutError` after `timeout` seconds."""
        if self.closed.done():
            raise ConnectionError(f"{self.name}: {self.closed.result()}")
        self._next_id += 1
        ident = self._next_id
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.writer.write(encode_control({**message, "id": ident}))
            async with asyncio.timeout(timeout):
                answer = await future
        finally:
            self._waiting.pop(ident, None)
        if "error" in answer:
            raise RemoteError(answer["error"])
        return answer

    def send_frames(self, stream: int, units: list[AccessUnit]) -> bool:
        """Queue a frames message; False (and counted) when the reader is too far behind."""
        if self.closed.done():
            return False
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_FRAMES_BACKLOG:
            self.frames_dropped += len(units)
            return False
        self.writer.writelines(encode_frames(stream, units))
        return True

    def close(self, reason: str = "closed") -> None:
        self._finish(reason)
        self.writer.close()

    # ----- receiving -----
    async def _read(self) -> None:
        reader = self.reader
        reason = "closed by the other side"
        try:
            while True:
                head = await reader.readexactly(_HEAD.size)
                length, kind = _HEAD.unpack(head)
                if not 1 <= length <= MAX_MESSAGE:
                    raise WireError(f"message of {length} bytes")
                body = await reader.readexactly(length - 1)
                if kind == CONTROL:
                    self._control(json.loads(body))
                elif kind == FRAMES:
                    stream, units = decode_frames(body)
                    self.on_frames(stream, units)
                else:
                    raise WireError(f"unknown message kind {kind}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            reason = "closed"
        except (WireError, ValueError) as exc:
            reason = f"broken message: {exc}"
            log.error("%s: %s", self.name, reason)
        except Exception as exc:  # a bug in a handler: the link ends, loudly
            reason = f"internal error: {type(exc).__name__}: {exc}"
            log.exception("%s failed", self.name)
        self._finish(reason)

    def _control(self, message: dict[str, Any]) -> None:
        if not isinstance(message, dict):
            raise WireError("a control message that is no object")
        answered = message.get("re")
        if answered is not None:
            future = self._waiting.get(answered)
            if future is not None and not future.done():
                future.set_result(message)
            return
        ident = message.get("id")
        try:
            result = self.on_control(message)
        except Exception as exc:
            self._answer_error(ident, exc)
            return
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(lambda t: self._answered(ident, t))
        elif ident is not None:
            self.send({"re": ident, **(result or {})})

    def _answered(self, ident: int | None, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)  # type: ignore[arg-type]
        if task.cancelled():
            self._answer_error(ident, ConnectionError("cancelled"))
        elif task.exception() is not None:
            self._answer_error(ident, task.exception())  # type: ignore[arg-type]
        elif ident is not None:
            self.send({"re": ident, **(task.result() or {})})

    def _answer_error(self, ident: int | None, exc: BaseException) -> None:
        if not isinstance(exc, (OSError, ValueError, KeyError, LookupError, RemoteError)):
            log.error("%s: request failed", self.name, exc_info=exc)
        if ident is not None:
            self.send({"re": ident, "error": f"{type(exc).__name__}: {exc}"})

    def _finish(self, reason: str) -> None:
        if self.closed.done():
            return
        self.closed.set_result(reason)
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{self.name}: {reason}"))
        for task in self._tasks:
            task.cancel()
        if not self._reading.done() and asyncio.current_task() is not self._reading:
            self._reading.cancel()
