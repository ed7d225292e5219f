"""A SHA-256 whose state can be saved at a checkpoint and taken up again by the next run.

``hashlib`` cannot export a hash's state, so a resumed fetch would have to read back the whole
output (up to ~900 GB) to finish its sha256. OpenSSL's own ``SHA256_*`` functions, from the
libcrypto that ``hashlib`` itself runs on, keep their state in a plain, documented struct
(``SHA256_CTX`` in ``openssl/sha.h``, unchanged since OpenSSL 0.9): saving those 112 bytes is
saving the hash. Same code, same speed as ``hashlib.sha256``. Where no libcrypto can be found
(not Linux, Python built without OpenSSL), :func:`sha256` returns a plain ``hashlib`` hash whose
state is None, and a resume falls back to hashing what is already written.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
from functools import lru_cache

import pyarrow as pa

SHA_LBLOCK = 16  # 32-bit words per 64-byte block


class _Context(ctypes.Structure):
    # SHA256state_st: h[8], Nl, Nh, data[SHA_LBLOCK], num, md_len
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * SHA_LBLOCK),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


@lru_cache(maxsize=1)
def _libcrypto():
    """The libcrypto ``hashlib`` is linked with (already loaded in this process), or None."""
    import _hashlib  # noqa: F401 - loads libcrypto into the process

    del _hashlib

    paths = []
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "libcrypto" in line.rsplit("/", 1)[-1]]
    except OSError:
        pass
    found = ctypes.util.find_library("crypto")
    for path in [*dict.fromkeys(paths), *([found] if found else [])]:
        try:
            lib = ctypes.CDLL(path)
            for name in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
                getattr(lib, name).restype = ctypes.c_int
            lib.SHA256_Init.argtypes = [ctypes.POINTER(_Context)]
            lib.SHA256_Update.argtypes = [ctypes.POINTER(_Context), ctypes.c_void_p, ctypes.c_size_t]
            lib.SHA256_Final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Context)]
        except (OSError, AttributeError):
            continue
        if _self_test(lib):
            return lib
    return None


def _self_test(lib) -> bool:
    """Whether this library hashes right, also across a saved and restored state (the struct's layout)."""
    data = b"smollm-corpus " * 11
    context = _Context()
    lib.SHA256_Init(ctypes.byref(context))
    lib.SHA256_Update(ctypes.byref(context), data, 100)
    restored = _Context.from_buffer_copy(bytes(context))
    lib.SHA256_Update(ctypes.byref(restored), data[100:], len(data) - 100)
    out = ctypes.create_string_buffer(32)
    lib.SHA256_Final(out, ctypes.byref(restored))
    return out.raw == hashlib.sha256(data).digest()


class ResumableSha256:
    """SHA-256 with a :meth:`state` to save and :func:`resume` to take up; ``update`` lets go of the GIL."""

    def __init__(self, lib, context: _Context | None = None) -> None:
        self._lib = lib
        self._context = context if context is not None else _Context()
        if context is None:
            lib.SHA256_Init(ctypes.byref(self._context))

    @property
    def length(self) -> int:
        """How many bytes have been hashed."""
        return ((self._context.Nh << 32) | self._context.Nl) // 8

    def update(self, data) -> None:
        buffer = pa.py_buffer(data)  # the address of any bytes-like object, read-only ones too, without a copy
        if buffer.size:
            self._lib.SHA256_Update(ctypes.byref(self._context), buffer.address, buffer.size)

    def state(self) -> str:
        """The state, as text for the manifest."""
        return bytes(self._context).hex()

    def hexdigest(self) -> str:
        context = _Context.from_buffer_copy(bytes(self._context))  # finishing must not end this hash
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, ctypes.byref(context))
        return out.raw.hex()


def sha256() -> "ResumableSha256 | hashlib._Hash":
    """A new SHA-256: resumable where libcrypto can be reached, else hashlib's (whose state cannot be saved)."""
    lib = _libcrypto()
    return ResumableSha256(lib) if lib is not None else hashlib.sha256()


def state(digest) -> str | None:
    """What :func:`resume` needs to take ``digest`` up again, or None where it cannot be saved."""
    return digest.state() if isinstance(digest, ResumableSha256) else None


def resume(saved: str | None) -> ResumableSha256 | None:
    """The SHA-256 whose :meth:`ResumableSha256.state` was ``saved``; None where that cannot be done here."""
    lib = _libcrypto()
    if lib is None or not saved:
        return None
    try:
        raw = bytes.fromhex(saved)
    except ValueError:
        return None
    if len(raw) != ctypes.sizeof(_Context):
        return None
    context = _Context.from_buffer_copy(raw)
    if context.md_len != 32 or context.num >= 64:
        return None
    return ResumableSha256(lib, context)
