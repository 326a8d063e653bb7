"""One remote-link TCP connection as a stream of frames, both ends' common part.

Connections are ``asyncio.BufferedProtocol`` so large READ and WRITE payloads are received straight
into the buffer handed to the caller or the volume; frames are decoded by the sans-IO
:class:`~storaged.remote.reader.FrameReader`. This base moves bytes, pauses reading for
backpressure, runs this side's handshake machine and seals every frame sent after it; the server
(:mod:`.server`) and client (:mod:`.client`) connections say what the frames mean.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from ..logfmt import with_log_fields
from ..netio import BatchedWriter, tune_socket
from .auth import HandshakeError
from .integrity import FrameMac
from .protocol import MAX_VERSION, Buffer, Frame, FrameType, Opcode, ProtocolError, Status, encode_error
from .reader import FrameReader

#: the one logger of the whole link (every module of it), named as before it was split into
#: modules: the log levels and filters operators set name it
LOGGER = "storaged.remote.link"
log = logging.getLogger(LOGGER)


class RateLimitedWarning:
    """Logs a WARNING at most once per ``interval`` seconds; the next one counts those dropped."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._dropped = 0

    def __call__(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return
        if self._dropped:
            msg, args = msg + " (and %d more not logged)", (*args, self._dropped)
        log.warning(msg, *args)
        self._last = now
        self._dropped = 0


class FrameConnection(asyncio.BufferedProtocol):
    """One TCP connection as a stream of frames; subclasses say what the frames mean."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = FrameReader.handshake()
        #: seals every frame we send once the handshake is done
        self.tx_mac: FrameMac | None = None
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.version = MAX_VERSION
        self.last_rx = self.loop.time()
        self.bytes_in = 0
        self.bytes_out = 0
        self.closing = False
        self.close_reason = ""
        self.lost: asyncio.Future[None] = self.loop.create_future()
        #: buffers queued during this loop iteration, sent with one writelines()
        self.out = BatchedWriter(self.loop)
        self._pause_reasons: set[str] = set()
        self._process_scheduled = False
        #: the fields this connection's log lines carry (storaged.logfmt): the peer, once known
        self.log_fields: dict[str, Any] = {}

    # --- asyncio callbacks -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.out.transport = transport  # type: ignore[assignment]
        self.address = tune_socket(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.bytes_in += nbytes
        self.last_rx = self.loop.time()
        self.reader.buffer_updated(nbytes)
        if self.reader.payload_complete:
            # the transport still holds the view it read into: finish on the next iteration, when
            # it is gone, so the payload becomes the caller's bytes without a copy
            if not self._process_scheduled:
                self._process_scheduled = True
                self.loop.call_soon(self._deferred_process)
        else:
            self.process()

    def _deferred_process(self) -> None:
        self._process_scheduled = False
        self.process()

    def eof_received(self) -> bool | None:
        return None  # half-closed is closed: let the transport close

    @with_log_fields
    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed by the peer"
        self.out.discard()
        if not self.lost.done():
            self.lost.set_result(None)
        self.on_lost()

    def pause_writing(self) -> None:
        # the peer is not reading what we send: stop reading what it sends too
        self.pause("write")

    def resume_writing(self) -> None:
        self.resume("write")

    # --- framing ---------------------------------------------------------------------------

    @with_log_fields
    def process(self) -> None:
        """Decode and handle buffered frames until more bytes are needed or ``hold()`` says stop."""
        while not self.closing:
            if self.hold():
                return
            try:
                frame = self.reader.next_frame()
            except ProtocolError as e:
                self.log_bad_frame(e)
                self.fail(e.status, f"bad frame: {e}")
                return
            if frame is None:
                self.drained()
                return
            self.frame_received(frame)

    def hold(self) -> bool:
        return False

    def log_bad_frame(self, e: ProtocolError) -> None:
        log.warning("remote link: bad frame from %s: %s", self.address, e)

    def drained(self) -> None:
        """Every buffered frame is handled."""

    def frame_received(self, frame: Frame) -> None:
        raise NotImplementedError

    def on_lost(self) -> None:
        """The connection is gone (after ``close`` or a network failure)."""

    # --- output ----------------------------------------------------------------------------

    def send(self, buffers: Sequence[Buffer]) -> None:
        """Queue one encoded frame (``[header, *payload parts]``), sealed after the handshake."""
        if self.closing or not buffers:
            return
        if self.tx_mac is not None:
            buffers = self.tx_mac.seal(buffers)
        self.bytes_out += sum(len(b) for b in buffers)
        self.out.queue(buffers)

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if not self._pause_reasons and self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def paused(self, reason: str) -> bool:
        return reason in self._pause_reasons

    def step_handshake(self, frame: Frame) -> HandshakeError | None:
        """Feed a handshake frame to this side's machine and send its answer. On failure the
        connection is closed (with an ERROR frame unless the peer sent one) and the error returned."""
        try:
            out = self.hs.receive(frame)  # type: ignore[attr-defined]
        except HandshakeError as e:
            if frame.type == FrameType.ERROR:
                self.close(e.message)
            else:
                self.fail(e.status, e.message)
            return e
        if self.hs.version is not None:  # type: ignore[attr-defined]
            self.version = self.reader.version = self.hs.version  # type: ignore[attr-defined]
        self.send(out)  # the last handshake frame goes out untagged: the proofs cover it
        if self.hs.done:  # type: ignore[attr-defined]
            tx, rx = self.hs.session_keys()  # type: ignore[attr-defined]
            self.tx_mac = FrameMac(tx)
            self.reader.authenticated(self.version, FrameMac(rx))
        return None

    def fail(self, status: int, message: str) -> None:
        """Tell the peer why (ERROR frame), then close."""
        if self.closing:
            return
        self.send(encode_error(status, message, version=self.version))
        self.close(message)

    def close(self, reason: str) -> None:
        if self.closing:
            return
        self.close_reason = reason
        self.out.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


def op_name(op: int) -> str:
    try:
        return Opcode(op).name
    except ValueError:
        return f"opcode {op}"
