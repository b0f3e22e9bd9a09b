"""Reading a PDF's streams in tests: each stream is cut by the /Length its dictionary declares. Searching for the
next "endstream" instead loses a compressed stream whose last byte happens to be a carriage return (about one in
256), because the line break before "endstream" may be CR LF."""
from __future__ import annotations

import re
import zlib

_STREAM_START = re.compile(rb"/Length (\d+)\b(?:(?!stream).)*?>>\s*stream\r?\n", re.S)


def raw_streams(pdf: bytes) -> list[bytes]:
    """Every stream payload of the PDF exactly as stored."""
    return [pdf[m.end():m.end() + int(m.group(1))] for m in _STREAM_START.finditer(pdf)]


def streams(pdf: bytes) -> list[bytes]:
    """Every stream payload, inflated where it is Flate-compressed."""
    out = []
    for raw in raw_streams(pdf):
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            out.append(raw)
    return out
