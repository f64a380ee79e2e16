"""The request side of `moskd serve`: bodies read within their limits (raw or multipart), refusals
as HTTPProblem (status and one line), and decoding to the model card's arrays.

A refused body is read and discarded up to DRAIN_BYTES before its answer goes out, so a client
that sends the whole body before reading gets its 413 (or 415) on an intact connection; past that
bound the answer says `Connection: close` and the connection is closed.
"""
from __future__ import annotations

import numpy as np

from inference.images import BadImage, decode_bytes

RAW_TYPES = ("application/octet-stream",)  # plus any image/* type
MAX_FILES = 256  # images in one multipart request
DRAIN_BYTES = 64 << 20  # most bytes of a refused body read and discarded before closing instead


class HTTPProblem(Exception):
    """A request the server refuses: status code and one line saying what to fix; close: the body was
    not read to its end, so the connection cannot carry another request."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.close = status, close


async def read_limited(request, max_bytes: int, drain_bytes: int = DRAIN_BYTES, keep: bool = True) -> bytes:
    """The request body, refusing (413) anything over max_bytes, declared or actually sent. A refused
    body is still read (and dropped) up to drain_bytes, so a client that sends it all before reading
    reads its 413 on an intact connection; past drain_bytes the 413 closes the connection.
    keep=False: read and drop the body whatever its size (up to drain_bytes), returning b""."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise HTTPProblem(400, f"Content-Length {declared!r} is not a number", close=True) from None
        if keep and declared_bytes > max_bytes:
            ended = declared_bytes <= drain_bytes and (await _receive(request, 0, drain_bytes))[1]
            raise HTTPProblem(413, f"body of {declared_bytes:,} bytes is over the {max_bytes:,}-byte limit; "
                                   f"send a smaller image", close=not ended)
    body, ended = await _receive(request, max_bytes if keep else 0, drain_bytes)
    if keep and (body is None or not ended):
        raise HTTPProblem(413, f"body is over the {max_bytes:,}-byte limit; send a smaller image", close=not ended)
    if not ended:
        raise HTTPProblem(413, f"body is over the {drain_bytes:,}-byte limit", close=True)
    return body or b""


async def _receive(request, keep_bytes: int, drain_bytes: int) -> tuple[bytes | None, bool]:
    """Read the body from the ASGI channel: (its bytes, or None once over keep_bytes; whether it was
    read to its end before passing drain_bytes)."""
    chunks, size = [], 0
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            raise HTTPProblem(400, "the client went away before sending its whole body", close=True)
        data = msg.get("body", b"")
        size += len(data)
        if size <= keep_bytes:
            chunks.append(data)
        if not msg.get("more_body", False):
            return (b"".join(chunks) if size <= keep_bytes else None), True
        if size > drain_bytes:
            return None, False


async def images_of(request, max_bytes: int, drain_bytes: int = DRAIN_BYTES) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of every image in the request, raw body or multipart."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        from starlette.formparsers import MultiPartException, MultiPartParser

        body = await read_limited(request, max_bytes, drain_bytes)

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=MAX_FILES, max_fields=MAX_FILES,
                                         max_part_size=max_bytes).parse()
        except MultiPartException as e:
            raise HTTPProblem(400, f"malformed multipart body ({e.message}); send files as multipart/form-data")
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise HTTPProblem(400, "multipart body holds no file; send each image as a file field")
        out = []
        for f in files:
            out.append((f.filename, await f.read()))
            await f.close()
        return out
    if media.startswith("image/") or media in RAW_TYPES:
        return [(None, await read_limited(request, max_bytes, drain_bytes))]
    shown = media or "none"
    try:  # its body is never used, but the client may still be sending it
        await read_limited(request, max_bytes, drain_bytes, keep=False)
        close = False
    except HTTPProblem:
        close = True
    raise HTTPProblem(415, f"content type {shown} is not accepted; send the image as the body with "
                           f"Content-Type image/png (or image/*, application/octet-stream) or as multipart/form-data",
                      close=close)


def decode_all(parts: list[tuple[str | None, bytes]], card: dict, invert: str) -> list[np.ndarray]:
    """Every part as the card's (C, H, W) uint8 array (in a worker thread); the first bad one -> 400."""
    arrays = []
    for name, data in parts:
        try:
            arrays.append(decode_bytes(data, card, invert))
        except BadImage as e:
            where = f"file {name!r}: " if name is not None else ""
            raise HTTPProblem(400, f"{where}{e}") from None
    return arrays
