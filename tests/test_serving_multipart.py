"""The multipart/form-data parser (serving/multipart.py) on bodies real clients produce, and broken ones."""

from __future__ import annotations

import io

import pytest
import requests
from werkzeug.test import EnvironBuilder

from serving.multipart import MultipartError, TooManyParts, boundary_of, parse

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n"


def requests_body(files, data=None) -> tuple[bytes, str]:
    prepared = requests.Request("POST", "http://x/predict", files=files, data=data).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def test_a_body_from_requests():
    body, content_type = requests_body([("img", ("cat.png", PNG, "image/png")),
                                        ("img", ("dog.png", b"second", "image/png"))], data={"topk": "3"})
    parts = parse(body, boundary_of(content_type), 10)
    assert [(p.name, p.filename, p.data) for p in parts] == [
        ("topk", None, b"3"), ("img", "cat.png", PNG), ("img", "dog.png", b"second")]
    assert parts[1].content_type == "image/png"


def test_a_body_from_werkzeug_with_a_unicode_file_name():
    builder = EnvironBuilder(method="POST", data={"img": (io.BytesIO(PNG), "chat été.png"), "model": "dwsep"})
    environ = builder.get_environ()
    body = environ["wsgi.input"].read()
    parts = parse(body, boundary_of(environ["CONTENT_TYPE"]), 10)
    assert {p.name: (p.filename, p.data) for p in parts} == {"img": ("chat été.png", PNG), "model": (None, b"dwsep")}


def test_preamble_epilogue_empty_parts_and_padding_are_accepted():
    body = (b"preamble text\r\n--XyZ  \r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\r\n"
            b"--XyZ\r\ncontent-disposition: form-data; name=\"img\"; filename=\"x.bin\"\r\n\r\nDATA\r\n"
            b"--XyZ--\r\nepilogue")
    parts = parse(body, b"XyZ", 10)
    assert [(p.name, p.filename, p.data) for p in parts] == [("a", None, b""), ("img", "x.bin", b"DATA")]


def test_a_part_without_content_may_end_right_after_its_headers():
    # werkzeug's encoder writes an empty file like this: the blank line is the delimiter's CRLF
    body = b"--XyZ\r\nContent-Disposition: form-data; name=\"img\"; filename=\"e.png\"\r\n\r\n--XyZ--\r\n"
    assert [(p.name, p.filename, p.data) for p in parse(body, b"XyZ", 10)] == [("img", "e.png", b"")]


def test_an_empty_form_has_no_parts():
    assert parse(b"--XyZ--\r\n", b"XyZ", 10) == []


@pytest.mark.parametrize("body, message", [
    (b"no boundary anywhere", "no line with the boundary"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\ntruncated upl", "closing boundary is missing"),
    (b"--XyZ\r\nContent-Type: image/png\r\n\r\nDATA\r\n--XyZ--\r\n", "no Content-Disposition"),
    (b"--XyZ\r\nContent-Disposition: attachment; name=\"img\"\r\n\r\nDATA\r\n--XyZ--\r\n", "not 'form-data'"),
    (b"--XyZ\r\nContent-Disposition: form-data\r\n\r\nDATA\r\n--XyZ--\r\n", "not 'form-data' with a name"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"img\"\r\nDATA\r\n--XyZ--\r\n", "no blank line"),
    (b"--XyZ\r\nbroken header\r\n\r\nDATA\r\n--XyZ--\r\n", "malformed header"),
    (b"--XyZ garbage\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XyZ--", "boundary line is malformed"),
    (b"--XyZ", "boundary line is malformed"),
])
def test_malformed_bodies_name_the_problem(body, message):
    with pytest.raises(MultipartError, match=message) as err:
        parse(body, b"XyZ", 10)
    assert err.value.status == 400


def test_too_many_parts_is_413():
    part = b"--XyZ\r\nContent-Disposition: form-data; name=\"img\"\r\n\r\nx\r\n"
    body = part * 5 + b"--XyZ--"
    assert len(parse(body, b"XyZ", 5)) == 5
    with pytest.raises(TooManyParts) as err:
        parse(body, b"XyZ", 4)
    assert err.value.status == 413


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=",
                                          "multipart/form-data; boundary=" + "x" * 300])
def test_unusable_boundaries(content_type):
    with pytest.raises(MultipartError, match="boundary"):
        boundary_of(content_type)


def test_quoted_boundary():
    assert boundary_of('multipart/form-data; boundary="a b:c"') == b"a b:c"
