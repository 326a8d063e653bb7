"""Transports to a command device: ``iscsi://`` URLs and block devices (or plain files).

A command device is read and written like any LUN (the spec's point: commands travel over the same
protocol as data). :class:`CommandDeviceIO` is the narrow interface the client needs; offsets and
lengths given to :meth:`CommandDeviceIO.read` need not be aligned (the transport reads the covering
blocks), while writes must be whole blocks (the client pads every block it writes).
"""

from __future__ import annotations

import abc
import asyncio
import errno
import fcntl
import mmap
import os
import stat
import struct
from typing import Any

from storaged.iscsi.initiator import (
    DEFAULT_INITIATOR,
    InitiatorError,
    IscsiSession,
    IscsiUrl,
    LoginRefused,
    ScsiReply,
)

from . import cdb
from .errors import CommandTimeout, ProtocolError, UnreachableError, UsageError

BLKSSZGET = 0x1268  # <linux/fs.h>: logical sector size, int
FILE_BLOCK_SIZE = 512


class CommandDeviceIO(abc.ABC):
    """Block access to one command device LUN."""

    #: logical block size in bytes (512 or 4096)
    block_size: int = 512
    #: a short name for messages: the URL or the path
    name: str = ""

    @abc.abstractmethod
    async def _read_blocks(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``; both are multiples of the block size."""

    @abc.abstractmethod
    async def _write_blocks(self, offset: int, data: bytes) -> None:
        """Write whole blocks at ``offset`` durably (FUA / O_SYNC)."""

    async def read(self, offset: int, length: int) -> bytes:
        bs = self.block_size
        start = offset - offset % bs
        end = -(-(offset + length) // bs) * bs
        data = await self._read_blocks(start, end - start)
        return data[offset - start : offset - start + length]

    async def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        bs = self.block_size
        if offset % bs or len(data) % bs or not data:
            raise ValueError(f"write of {len(data)} bytes at {offset} is not whole {bs}-byte blocks")
        await self._write_blocks(offset, bytes(data))

    async def close(self) -> None:  # noqa: B027 - optional
        """Release the transport (log out, close the file)."""

    async def __aenter__(self) -> CommandDeviceIO:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# --- iSCSI -----------------------------------------------------------------------------------

_LOGIN_STATUS = {
    0x0201: "authentication failed (check the CHAP user and secret in the URL)",
    0x0202: "authorization failure: this initiator may not log in to the target",
    0x0203: "no such target",
    0x0204: "target removed",
    0x0300: "target error",
    0x0301: "service unavailable",
}


_FRIENDLY_SENSE = {
    (0x2, 0x08, 0x00): "NOT READY, logical unit communication failure",
    (0x2, 0x04, 0x00): "NOT READY, cause not reportable",
    (0x5, 0x21, 0x00): "ILLEGAL REQUEST, LBA out of range",
    (0x7, 0x27, 0x00): "DATA PROTECT, write protected",
    (0x3, 0x11, 0x00): "MEDIUM ERROR, unrecovered read error",
}


def describe_sense(reply: ScsiReply) -> str:
    from storaged.scsi.sense import SENSE_TABLE

    key = reply.sense_key
    asc = reply.asc_ascq
    if (key, *asc) in _FRIENDLY_SENSE:
        return _FRIENDLY_SENSE[(key, *asc)]
    for reason, (k, a, q) in SENSE_TABLE.items():
        if (k, a, q) == (key, *asc):
            return reason.name.lower().replace("_", " ")
    if not reply.sense:
        return f"SCSI status {reply.status:#04x}"
    return f"sense {key:x}/{asc[0]:02x}/{asc[1]:02x}"


def _redact(url: IscsiUrl) -> str:
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"iscsi://{host}:{url.port}/{url.target}/{url.lun}"


class IscsiSessionHolder:
    """One logged-in session, shared by the devices opened on the same target."""

    def __init__(self, session: IscsiSession, url: IscsiUrl) -> None:
        self.session = session
        self.url = url
        self.users = 0

    async def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            try:
                await self.session.logout(timeout=2.0)
            except (TimeoutError, InitiatorError, OSError):
                await self.session.close()


class IscsiDevice(CommandDeviceIO):
    """A command device reached over an iSCSI session (READ(16), WRITE(16) with FUA)."""

    def __init__(
        self, holder: IscsiSessionHolder, lun: int, capacity: cdb.Capacity, *, initiator: str, timeout: float
    ) -> None:
        self.holder = holder
        self.lun = lun
        self.block_size = capacity.block_size
        self.blocks = capacity.blocks
        self.initiator = initiator
        self.timeout = timeout
        self.url = IscsiUrl(holder.url.host, holder.url.port, holder.url.target, lun, holder.url.chap)
        self.name = _redact(self.url)
        holder.users += 1
        self._closed = False

    @classmethod
    async def open(
        cls, url: str | IscsiUrl, *, initiator: str = DEFAULT_INITIATOR, timeout: float = 10.0
    ) -> IscsiDevice:
        """Log in to the URL's target and check its LUN: UnreachableError says why not."""
        if isinstance(url, str):
            try:
                url = IscsiUrl.parse(url)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        holder = await cls._login(url, initiator, timeout)
        try:
            return await cls._attach(holder, url.lun, initiator=initiator, timeout=timeout)
        except BaseException:
            if holder.users == 0:
                holder.users = 1
                await holder.release()
            raise

    @staticmethod
    async def _login(url: IscsiUrl, initiator: str, timeout: float) -> IscsiSessionHolder:
        where = _redact(url)
        session = IscsiSession()
        try:
            await session.login(
                url.host,
                url.port,
                url.target,
                initiator=initiator,
                chap=url.chap,
                chap_algorithms=(8, 7, 6, 5) if url.chap else (5,),
                timeout=timeout,
            )
        except LoginRefused as exc:
            why = _LOGIN_STATUS.get(exc.status, f"login refused with status {exc.status:#06x}")
            raise UnreachableError(f"cannot reach {where}: {why}") from None
        except ConnectionRefusedError:
            raise UnreachableError(f"cannot reach {where}: connection refused") from None
        except TimeoutError:
            await session.close()
            raise UnreachableError(f"cannot reach {where}: no answer within {timeout:g}s") from None
        except (OSError, InitiatorError) as exc:
            await session.close()
            msg = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UnreachableError(f"cannot reach {where}: {msg}") from None
        return IscsiSessionHolder(session, url)

    @classmethod
    async def _attach(
        cls, holder: IscsiSessionHolder, lun: int, *, initiator: str, timeout: float
    ) -> IscsiDevice:
        url = IscsiUrl(holder.url.host, holder.url.port, holder.url.target, lun, holder.url.chap)
        reply = await cls._scsi(
            holder.session,
            _redact(url),
            lun,
            cdb.read_capacity16(),
            read_length=cdb.READ_CAPACITY_16_LEN,
            timeout=timeout,
        )
        try:
            capacity = cdb.parse_read_capacity16(reply.data)
        except ValueError as exc:
            raise ProtocolError(f"{_redact(url)}: {exc}") from None
        if capacity.block_size not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise ProtocolError(f"{_redact(url)}: odd block size {capacity.block_size}")
        return cls(holder, lun, capacity, initiator=initiator, timeout=timeout)

    async def open_lun(self, lun: int, target: str | None = None) -> IscsiDevice:
        """Another LUN on the same portal: same session if the target is the same, else a new login."""
        if target in (None, "", self.holder.url.target):
            return await self._attach(self.holder, lun, initiator=self.initiator, timeout=self.timeout)
        url = IscsiUrl(self.holder.url.host, self.holder.url.port, target or "", lun, self.holder.url.chap)
        return await IscsiDevice.open(url, initiator=self.initiator, timeout=self.timeout)

    @staticmethod
    async def _scsi(
        session: IscsiSession,
        where: str,
        lun: int,
        cdb_: bytes,
        data_out: bytes = b"",
        read_length: int = 0,
        timeout: float = 30.0,
    ) -> ScsiReply:
        try:
            reply = await session.scsi(lun, cdb_, data_out=data_out, read_length=read_length, timeout=timeout)
        except TimeoutError:
            raise CommandTimeout(f"{where}: no answer to a SCSI command within {timeout:g}s") from None
        except (InitiatorError, OSError) as exc:
            raise UnreachableError(f"{where}: session lost: {exc}") from None
        if reply.status == 0:
            return reply
        if reply.sense_key == 0x5 and reply.asc_ascq[0] == 0x25:
            raise UnreachableError(f"{where}: no such LUN")
        err = UnreachableError(f"{where}: I/O failed: {describe_sense(reply)}")
        # NOT READY, LOGICAL UNIT COMMUNICATION FAILURE: a virtual volume whose peer link is down
        err.comm_failure = reply.sense_key == 0x2 and reply.asc_ascq[0] == 0x08  # type: ignore[attr-defined]
        raise err

    async def _read_blocks(self, offset: int, length: int) -> bytes:
        bs = self.block_size
        reply = await self._scsi(
            self.holder.session,
            self.name,
            self.lun,
            cdb.read16(offset // bs, length // bs, bs),
            read_length=length,
            timeout=self.timeout,
        )
        data = reply.data
        if len(data) < length:
            raise ProtocolError(f"{self.name}: short read: {len(data)} of {length} bytes")
        return data

    async def _write_blocks(self, offset: int, data: bytes) -> None:
        bs = self.block_size
        await self._scsi(
            self.holder.session,
            self.name,
            self.lun,
            cdb.write16(offset // bs, len(data) // bs, bs, fua=True),
            data_out=data,
            timeout=self.timeout,
        )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.holder.release()


# --- block devices and files -----------------------------------------------------------------


class BlockDevice(CommandDeviceIO):
    """A command device seen as a local block device (open-iscsi's /dev/sdX, a loop device) or a file.

    Opened with O_DIRECT|O_SYNC so every read reaches the array (no page cache) and every write is
    on the device before it returns; where O_DIRECT is refused (tmpfs, some filesystems) it falls
    back to O_SYNC and, for files, drops the cached pages after each read with posix_fadvise.
    Buffers are page-aligned (mmap), and the blocking calls run in a worker thread.
    """

    def __init__(self, path: str, *, direct: bool = True) -> None:
        self.path = path
        self.name = path
        flags = os.O_RDWR | os.O_SYNC | getattr(os, "O_CLOEXEC", 0)
        o_direct = getattr(os, "O_DIRECT", 0)
        self.direct = False
        try:
            if direct and o_direct:
                try:
                    self.fd = os.open(path, flags | o_direct)
                    self.direct = True
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.fd = os.open(path, flags)
            else:
                self.fd = os.open(path, flags)
        except FileNotFoundError:
            raise UnreachableError(f"cannot open {path}: no such device") from None
        except PermissionError:
            raise UnreachableError(
                f"cannot open {path}: permission denied (run as root or join the disk group)"
            ) from None
        except IsADirectoryError:
            raise UsageError(f"cannot open {path}: is a directory") from None
        except OSError as exc:
            raise UnreachableError(f"cannot open {path}: {exc.strerror or exc}") from None
        st = os.fstat(self.fd)
        self.is_block = stat.S_ISBLK(st.st_mode)
        if self.is_block:
            buf = fcntl.ioctl(self.fd, BLKSSZGET, struct.pack("i", 0))
            self.block_size = struct.unpack("i", buf)[0]
        else:
            self.block_size = FILE_BLOCK_SIZE
        self._lock = asyncio.Lock()

    @staticmethod
    def _buffer(length: int) -> mmap.mmap:
        return mmap.mmap(-1, max(mmap.PAGESIZE, -(-length // mmap.PAGESIZE) * mmap.PAGESIZE))

    def _pread(self, offset: int, length: int) -> bytes:
        buf = self._buffer(length)
        try:
            view = memoryview(buf)[:length]
            try:
                got = 0
                while got < length:
                    n = os.preadv(self.fd, [view[got:]], offset + got)
                    if n == 0:
                        break
                    got += n
                if not self.direct and not self.is_block and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self.fd, offset, length, os.POSIX_FADV_DONTNEED)
                if got < length:  # past the end of a file: zeros, like an unwritten LUN
                    view[got:length] = bytes(length - got)
                return bytes(view)
            finally:
                view.release()
        finally:
            buf.close()

    def _pwrite(self, offset: int, data: bytes) -> None:
        buf = self._buffer(len(data))
        try:
            view = memoryview(buf)[: len(data)]
            try:
                view[:] = data
                done = 0
                while done < len(data):
                    done += os.pwritev(self.fd, [view[done:]], offset + done)
            finally:
                view.release()
        finally:
            buf.close()

    async def _read_blocks(self, offset: int, length: int) -> bytes:
        async with self._lock:
            try:
                return await asyncio.to_thread(self._pread, offset, length)
            except OSError as exc:
                raise UnreachableError(f"{self.path}: read failed: {exc.strerror or exc}") from None

    async def _write_blocks(self, offset: int, data: bytes) -> None:
        async with self._lock:
            try:
                await asyncio.to_thread(self._pwrite, offset, data)
            except OSError as exc:
                raise UnreachableError(f"{self.path}: write failed: {exc.strerror or exc}") from None

    async def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def open_device(
    spec: str, *, initiator: str = DEFAULT_INITIATOR, timeout: float = 10.0
) -> CommandDeviceIO:
    """An ``iscsi://`` URL or a path (block device or file)."""
    if spec.startswith("iscsi://"):
        return await IscsiDevice.open(spec, initiator=initiator, timeout=timeout)
    if "://" in spec:
        raise UsageError(f"{spec!r}: expected iscsi://host[:port]/target/lun or a device path")
    return await asyncio.to_thread(BlockDevice, spec)
