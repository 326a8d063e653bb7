"""Decoding side of the remote-link wire format (sans-IO): bytes in, :class:`Frame` objects out.

A connection's reader starts in handshake mode (:meth:`FrameReader.handshake`): only handshake
frames are legal, payloads are capped at a few KiB and the receive buffer is small, so a peer that
has not authenticated can make the daemon hold a few KiB and never more. After the handshake
:meth:`FrameReader.authenticated` lifts the cap and makes every frame's tag mandatory.
"""

from __future__ import annotations

import io
from collections.abc import Collection

from crc32c import crc32c

from .integrity import TAG_SIZE, FrameMac
from .protocol import (
    _CRC,
    _FRAME_TYPES,
    _HEAD,
    HANDSHAKE_TYPES,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    PREAUTH_MAX_PAYLOAD,
    Buffer,
    Frame,
    FrameType,
    ProtocolError,
    Status,
)


class FrameReader:
    """Reassembles frames from a byte stream.

    Feed it with :meth:`feed` (any transport) or :meth:`get_buffer`/:meth:`buffer_updated` (an
    ``asyncio.BufferedProtocol``): for a large payload the reader hands out a view of the payload
    object itself, so the socket reads straight into the bytes a READ returns (no copy). That
    object's pages are only committed as bytes arrive (``bytes(n)`` is calloc'ed), so an announced
    length costs address space, not memory. :meth:`next_frame` decodes one frame and never looks
    past it, so a connection that stops calling it (backpressure) leaves the rest unparsed, and a
    mode change after the handshake applies to the very next frame. Any error is final: the
    stream cannot be resynchronised.
    """

    #: payloads at least this big are received directly into their own buffer
    DIRECT_THRESHOLD = 64 * 1024
    SCRATCH = 256 * 1024
    #: receive buffer before authentication: handshake frames are small
    HANDSHAKE_SCRATCH = 4096

    def __init__(self, version: int | None = None, max_payload: int = MAX_PAYLOAD, *,
                 types: Collection[int] = _FRAME_TYPES, scratch: int = SCRATCH, mac: FrameMac | None = None) -> None:
        #: the only protocol version accepted; None (before the handshake) accepts any
        self.version = version
        self.max_payload = max_payload
        #: frame types legal at this point of the connection
        self.types = frozenset(types)
        #: checks the tag after each header; None: frames carry no tag (handshake)
        self.mac = mac
        self._head_size = HEADER_SIZE + (TAG_SIZE if mac is not None else 0)
        self._buf = bytearray()
        self._scratch = bytearray(scratch)
        self._error: ProtocolError | None = None
        # a large payload being received in place
        self._head = b""
        self._bio: io.BytesIO | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._direct_handed = False
        self._ready: Frame | None = None  # a payload completed in place, not yet returned

    @classmethod
    def handshake(cls) -> FrameReader:
        """A reader for a connection that has not authenticated yet."""
        return cls(max_payload=PREAUTH_MAX_PAYLOAD, types=HANDSHAKE_TYPES, scratch=cls.HANDSHAKE_SCRATCH)

    def authenticated(self, version: int, mac: FrameMac) -> None:
        """From the next frame on: only ``version``, any frame type, full-size payloads, and a
        tag after every header, checked with ``mac``."""
        self.version = version
        self.max_payload = MAX_PAYLOAD
        self.types = _FRAME_TYPES
        self.mac = mac
        self._head_size = HEADER_SIZE + TAG_SIZE
        if len(self._scratch) < self.SCRATCH:
            self._scratch = bytearray(self.SCRATCH)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) + self._filled + (len(self._ready.payload) + self._head_size if self._ready else 0)

    @property
    def payload_complete(self) -> bool:
        """A payload received in place is complete. The transport may still hold the view it read
        into until its callback returns; calling :meth:`next_frame` after that lets the payload
        be handed out without a copy (``BytesIO.getvalue`` copies while any view is alive)."""
        return self._view is not None and self._filled == len(self._view)

    def feed(self, data: Buffer) -> None:
        mv = memoryview(data).cast("B")
        if self._view is not None:
            n = min(len(mv), len(self._view) - self._filled)
            self._view[self._filled : self._filled + n] = mv[:n]
            self._filled += n
            mv = mv[n:]
        if len(mv):
            self._buf += mv

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self.payload_complete:
            # the transport dropped the view it read into (it wants a new buffer): hand the
            # payload over now, without a copy, though next_frame() has not been called yet
            self._complete_direct()
        if self._view is not None and self._filled < len(self._view):
            self._direct_handed = True
            return self._view[self._filled :]
        self._direct_handed = False
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct_handed:
            self._filled += nbytes
        else:
            self._buf += memoryview(self._scratch)[:nbytes]

    def next_frame(self) -> Frame | None:
        """The next complete frame, None if more bytes are needed; raises ProtocolError."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except ProtocolError as e:
            self._error = e
            self._drop_direct()
            self._buf = bytearray()
            raise

    def _complete_direct(self) -> None:
        assert self._view is not None and self._bio is not None
        head = self._head
        self._view.release()
        self._view = None
        payload = self._bio.getvalue()  # the buffer itself when no other view is alive
        self._bio = None
        self._filled = 0
        try:
            self._ready = self._finish(head, payload)
        except ProtocolError as e:
            self._error = e

    def _next(self) -> Frame | None:
        if self.payload_complete:
            self._complete_direct()
            if self._error is not None:
                raise self._error
        if self._ready is not None:
            frame, self._ready = self._ready, None
            return frame
        if self._view is not None:
            return None
        buf, hsize = self._buf, self._head_size
        if len(buf) < HEADER_SIZE:
            return None
        length = self._check_header(buf)
        total = hsize + length
        if len(buf) >= total:
            head = bytes(buf[:hsize])
            payload = bytes(buf[hsize:total])
            del buf[:total]
            return self._finish(head, payload)
        if length >= self.DIRECT_THRESHOLD and len(buf) >= hsize:
            self._head = bytes(buf[:hsize])
            # bytes(n) is calloc'ed: no page is touched before the socket writes into it; with no
            # other reference BytesIO exports that very object, and getvalue() returns it
            bio = io.BytesIO(bytes(length))
            self._bio = bio
            self._view = bio.getbuffer()
            have = len(buf) - hsize
            self._view[:have] = buf[hsize:]
            self._filled = have
            buf.clear()
        return None

    def _check_header(self, buf: Buffer) -> int:
        magic, version, ftype, _op, _fl, _st, _rsv, _rid, length = _HEAD.unpack_from(buf)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {bytes(magic)!r}")
        if self.version is not None and version != self.version:
            raise ProtocolError(f"frame version {version}, connection speaks {self.version}",
                                Status.UNSUPPORTED_VERSION)
        if ftype not in _FRAME_TYPES:
            raise ProtocolError(f"unknown frame type {ftype}")
        if ftype not in self.types:
            raise ProtocolError(f"{FrameType(ftype).name} frame before the handshake is done", Status.WRONG_STATE)
        if length > self.max_payload:
            raise ProtocolError(f"payload of {length} bytes exceeds {self.max_payload}"
                                f"{'' if self.mac is not None else ' (handshake frame)'}")
        return int(length)

    def _finish(self, head: bytes, payload: bytes) -> Frame:
        (want,) = _CRC.unpack_from(head, _HEAD.size)
        got = crc32c(payload, crc32c(memoryview(head)[: _HEAD.size]))
        if got != want:
            raise ProtocolError(f"CRC32C mismatch (frame {want:#010x}, computed {got:#010x})")
        if self.mac is not None and not self.mac.verify(head[:HEADER_SIZE], head[HEADER_SIZE:], payload):
            raise ProtocolError(f"MAC mismatch on frame {self.mac.seq - 1} since the handshake (altered, "
                                "injected, replayed, reordered or dropped frame)", Status.INTEGRITY_FAILED)
        _m, version, ftype, opcode, flags, status, _r, rid, _len = _HEAD.unpack_from(head)
        return Frame(FrameType(ftype), opcode, flags, status, rid, payload, version)

    def _drop_direct(self) -> None:
        if self._view is not None:
            self._view.release()
        self._view = None
        self._bio = None
        self._filled = 0
