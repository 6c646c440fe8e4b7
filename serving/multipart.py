"""A strict multipart/form-data parser (RFC 7578 / RFC 2046) for a body already read into memory.

Why not Werkzeug's: it compiles two regular expressions for every new boundary, and real clients
(browsers, curl, requests) send a random boundary with every request, which cost about as much as
classifying the image. The body is bounded by MAX_UPLOAD_MB before it is read, so splitting it
with ``bytes.find`` is both simpler and faster. Line breaks must be CRLF, as every mainstream
client sends them; anything else is a MultipartError naming what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_options_header

CRLF = b"\r\n"
MAX_BOUNDARY = 200  # RFC 2046 allows 70 characters; be lenient, but not unbounded
MAX_PART_HEADER_BYTES = 8 * 1024  # a real part has two or three short header lines


class MultipartError(ValueError):
    """A body that is not well-formed multipart/form-data; ``status`` is the HTTP status to answer."""

    status = 400


class TooManyParts(MultipartError):
    status = 413


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def boundary_of(content_type: str) -> bytes:
    mimetype, options = parse_options_header(content_type)
    boundary = options.get("boundary", "")
    if not boundary:
        raise MultipartError("the multipart/form-data content type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii():
        raise MultipartError("the multipart boundary is not a short ASCII string")
    return boundary.encode("ascii")


def _headers(raw: bytes) -> dict[str, str]:
    headers = {}
    for line in raw.split(CRLF) if raw else ():
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError(f"a part has a malformed header line: {line[:60]!r}")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
    return headers


def parse(body: bytes, boundary: bytes, max_parts: int) -> list[Part]:
    """The parts of ``body`` in order. Raises MultipartError (400) or TooManyParts (413)."""
    dash = b"--" + boundary
    delimiter = CRLF + dash
    # Count before parsing anything: the close delimiter is one more match, a leading one maybe another.
    if body.count(delimiter) > max_parts + 1:
        raise TooManyParts(f"more than {max_parts} parts in the multipart body")
    if body.startswith(dash):
        pos = len(dash)
    else:
        found = body.find(delimiter)  # anything before the first boundary is a preamble, ignored
        if found < 0:
            raise MultipartError("the body contains no line with the boundary given in the Content-Type")
        pos = found + len(delimiter)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # the close delimiter; an epilogue after it is ignored
        line_end = body.find(CRLF, pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise MultipartError("a boundary line is malformed or the body ends after it")
        start = line_end + 2
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError("the body ends inside a part: the closing boundary is missing (truncated upload?)")
        if body.startswith(CRLF, start):
            raw_headers, content_start = b"", start + 2
        else:
            # The blank line may share its CRLF with the next delimiter: a part with no content at all.
            blank = body.find(CRLF + CRLF, start, min(end + 2, start + MAX_PART_HEADER_BYTES + 4))
            if blank < 0:
                if end + 2 - start > MAX_PART_HEADER_BYTES + 4:
                    raise MultipartError(f"a part's headers are longer than {MAX_PART_HEADER_BYTES // 1024} KiB")
                raise MultipartError("a part has no blank line between its headers and its content")
            raw_headers, content_start = body[start:blank], min(blank + 4, end)
        headers = _headers(raw_headers)
        disposition = headers.get("content-disposition")
        if disposition is None:
            raise MultipartError("a part has no Content-Disposition header")
        kind, params = parse_options_header(disposition)
        if kind.lower() != "form-data" or "name" not in params:
            raise MultipartError("a part's Content-Disposition is not 'form-data' with a name")
        if len(parts) >= max_parts:
            raise TooManyParts(f"more than {max_parts} parts in the multipart body")
        parts.append(Part(name=params["name"], filename=params.get("filename"),
                          content_type=headers.get("content-type"), data=body[content_start:end]))
        pos = end + len(delimiter)
