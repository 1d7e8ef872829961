"""What a history file's bytes say, read without SQLite: whether it is SQLite, and its schema version.

Opening a file with SQLite is not neutral: it may create ``-wal`` and ``-shm`` files beside it, and the last
connection to close checkpoints the write-ahead log into the file. So every check that may refuse a file
reads bytes only. The version is the header's ``user_version``, unless the file is in WAL mode and its log
holds a newer committed copy of the header page (a writer that has not checkpointed yet): then that one's.
"""

from __future__ import annotations

import struct
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
#: byte offset of the 4-byte big-endian ``user_version`` in the database header
USER_VERSION_OFFSET = 60
#: the header's "file format write version": 2 in WAL mode
_WRITE_VERSION_OFFSET = 18
_WAL_MAGICS = (0x377F0682, 0x377F0683)
_WAL_HEADER = 32
_FRAME_HEADER = 24


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def shm_path(path: Path) -> Path:
    return path.with_name(path.name + "-shm")


def read_header(path: Path) -> bytes:
    """Up to the first 100 bytes of the file; OSError (IsADirectoryError, FileNotFoundError, ...) as raised."""
    with path.open("rb") as f:
        return f.read(HEADER_SIZE)


def is_sqlite(header: bytes) -> bool:
    return len(header) == HEADER_SIZE and header.startswith(SQLITE_MAGIC)


def _user_version(page: bytes) -> int:
    return int.from_bytes(page[USER_VERSION_OFFSET:USER_VERSION_OFFSET + 4], "big")


def _committed_header_in_wal(path: Path) -> bytes | None:
    """The header page as the newest committed transaction in the log left it; None when no committed
    transaction of the log's current generation wrote it.

    Frames count while they carry the log header's salts (older generations, left past the end of a restarted
    log, do not) and up to the last commit frame. Checksums are not verified: a frame whose salts match but
    whose bytes are torn only follows a power loss, and SQLite's own read after opening is checked again.
    """
    try:
        with wal_path(path).open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            head = f.read(_WAL_HEADER)
            if len(head) < _WAL_HEADER:
                return None
            magic, _format, page_size, _sequence, salt1, salt2, _c1, _c2 = struct.unpack(">8I", head)
            if magic not in _WAL_MAGICS or page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
                return None
            committed = pending = None
            for offset in range(_WAL_HEADER, size - _FRAME_HEADER - page_size + 1, _FRAME_HEADER + page_size):
                f.seek(offset)
                frame = f.read(_FRAME_HEADER + HEADER_SIZE)  # the frame's header and its page's first bytes
                page_no, commit_pages, frame_salt1, frame_salt2 = struct.unpack(">4I", frame[:16])
                if (frame_salt1, frame_salt2) != (salt1, salt2) or page_no == 0:
                    break
                if page_no == 1:
                    pending = frame[_FRAME_HEADER:]
                if commit_pages:
                    committed, pending = pending or committed, None
            return committed
    except FileNotFoundError:
        return None


def schema_version(path: Path, header: bytes) -> int:
    """The committed ``user_version`` of a SQLite file whose first 100 bytes are ``header``."""
    if header[_WRITE_VERSION_OFFSET] == 2:  # WAL mode: the log may hold a newer header page
        newer = _committed_header_in_wal(path)
        if newer is not None:
            return _user_version(newer)
    return _user_version(header)
