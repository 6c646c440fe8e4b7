"""``/openapi.json`` is valid OpenAPI 3.1 and true: real answers of every endpoint are checked against it.

Each entry of CASES is one real request through Flask's test client (the repository's trained
tutorial and dwsep models, a real CIFAR-10 JPEG) and the status it must get. Its answer must be
documented for that path and method, its documented headers (X-Request-ID on every answer,
WWW-Authenticate on a 401) must be there, and a JSON body must validate against the documented
schema with no field the document leaves out. Adding a case is one line; a documented answer that
no case produces fails the coverage test.
"""

from __future__ import annotations

import fnmatch
import io
import re
from collections.abc import Callable
from typing import NamedTuple

import jsonschema
import numpy as np
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from PIL import Image
from test_serving_support import cifar_jpegs, shipped_models

import serving
from serving import lifecycle
from serving.models import LoadedModel
from serving.request_context import PROTECTED_ENDPOINTS

MAX_BATCH = 4
MAX_UPLOAD_MB = 1
TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Headers the service itself sets (not Flask's Content-Type and the like): each must be documented where sent.
SERVICE_HEADERS = ("X-Request-ID", "WWW-Authenticate", "Inference-Header-Content-Length", "Retry-After")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    weights = shipped_models(tmp_path_factory.mktemp("openapi-models"))  # no manifest: dwsep is the default
    return serving.create_app({"MODELS_DIR": str(weights), "MAX_BATCH": MAX_BATCH, "MAX_UPLOAD_MB": MAX_UPLOAD_MB})


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def spec(app):
    return app.test_client().get("/openapi.json").get_json()


@pytest.fixture(scope="module")
def jpeg(data_archive) -> bytes:
    return cifar_jpegs(data_archive)[3][2]


# --- request bodies: each takes the test JPEG and gives the test client's keyword arguments ---------------------

def form(*uploads: bytes, **fields: str) -> dict:
    files = [(io.BytesIO(data), f"image{i}.jpg") for i, data in enumerate(uploads)]
    return {"data": {"img": files, **fields}, "content_type": "multipart/form-data"}


def raw(data: bytes, content_type: str) -> dict:
    return {"data": data, "content_type": content_type}


def tensor_request(jpeg: bytes, rows: int = 1, **changes) -> dict:
    """A v2 infer request of the JPEG's 32x32 RGB pixels, ``rows`` times; ``changes`` replace top-level keys."""
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    image = {"name": "image", "datatype": "UINT8", "shape": [rows, 32, 32, 3],
             "data": np.stack([pixels] * rows).ravel().tolist()}
    return {"json": {"inputs": [image], **changes}}


class StalledBody(io.BytesIO):
    """A body whose bytes never come: every read times out, as the worker's socket read would."""

    def __init__(self):
        super().__init__(b"\0" * 1000)  # the test client takes the Content-Length from the stream's size

    def read(self, *args):
        raise TimeoutError("timed out")

    readinto = readline = read


def stalled(content_type: str) -> dict:
    return {"input_stream": StalledBody(), "content_type": content_type}


# --- service states a case may need, set up for that case only --------------------------------------------------

def _onnxruntime_fails(*args, **kwargs):
    raise RuntimeError("onnxruntime failed")


STATES: dict[str, Callable] = {
    "token required": lambda app, patch: patch.setitem(app.config, "API_TOKEN", TOKEN),
    "shutting down": lambda app, patch: patch.setattr(lifecycle, "_shutting_down", True),
    "model not warmed": lambda app, patch: patch.setattr(app.extensions["model_registry"].models["dwsep"],
                                                         "warmed", False),
    "model failing": lambda app, patch: patch.setattr(LoadedModel, "run", _onnxruntime_fails),
    # the worker's BODY_BUDGET_MB is all taken by other requests' bodies
    "body budget full": lambda app, patch: patch.setattr(app.extensions["body_budget"], "in_flight",
                                                         app.extensions["body_budget"].total),
}


class Case(NamedTuple):
    method: str
    url: str
    status: int
    body: Callable[[bytes], dict] | None = None  # the test JPEG -> the test client's keyword arguments
    state: str | None = None  # a key of STATES

    def __str__(self) -> str:
        return f"{self.method} {self.url} {self.status}" + (f" ({self.state})" if self.state else "")


V2_MODEL_URLS = ("/v2/models/dwsep", "/v2/models/dwsep/versions/1")

CASES = [
    Case("GET", "/", 200),
    Case("GET", "/static/app.js", 200),
    Case("GET", "/static/style.css", 200),
    Case("GET", "/static/missing.js", 404),
    Case("POST", "/predict", 200, lambda jpeg: form(jpeg)),
    Case("POST", "/predict?topk=3&model=tutorial", 200, lambda jpeg: form(jpeg, jpeg, jpeg)),
    Case("POST", "/predict?topk=10", 200, lambda jpeg: raw(jpeg, "image/jpeg")),
    Case("POST", "/predict", 200, lambda jpeg: {**form(jpeg), "headers": AUTH}, "token required"),
    Case("POST", "/predict?include_input=true", 200, lambda jpeg: form(jpeg)),
    Case("POST", "/predict", 200, lambda jpeg: form(jpeg, jpeg, include_input="1")),
    Case("POST", "/predict?topk=11", 400, lambda jpeg: form(jpeg)),
    Case("POST", "/predict?include_input=maybe", 400, lambda jpeg: form(jpeg)),
    Case("POST", "/predict", 400, lambda jpeg: form(b"not an image")),
    Case("POST", "/predict", 400, lambda jpeg: form(topk="3")),
    Case("POST", "/predict", 401, lambda jpeg: form(jpeg), "token required"),
    Case("POST", "/predict", 401, lambda jpeg: {**form(jpeg), "headers": {"Authorization": "Bearer nope"}},
         "token required"),
    Case("POST", "/predict", 503, lambda jpeg: form(jpeg), "body budget full"),
    Case("POST", "/predict?model=nope", 404, lambda jpeg: form(jpeg)),
    Case("POST", "/predict", 408, lambda jpeg: stalled("image/jpeg")),
    Case("POST", "/predict", 413, lambda jpeg: form(*[jpeg] * (MAX_BATCH + 1))),
    Case("POST", "/predict", 413, lambda jpeg: raw(bytes(MAX_UPLOAD_MB * 2**20 + 1), "image/png")),
    Case("POST", "/predict", 415, lambda jpeg: raw(jpeg, "text/plain")),
    Case("POST", "/predict", 415, lambda jpeg: raw(b"not an image", "application/json")),
    Case("POST", "/predict", 500, lambda jpeg: form(jpeg), "model failing"),
    Case("GET", "/models", 200),
    Case("GET", "/models", 200, lambda jpeg: {"headers": AUTH}, "token required"),
    Case("GET", "/models", 401, None, "token required"),
    Case("GET", "/healthz", 200),
    Case("GET", "/healthz", 200, None, "token required"),
    Case("GET", "/readyz", 200),
    Case("GET", "/readyz", 503, None, "shutting down"),
    Case("GET", "/metrics", 200),
    Case("GET", "/metrics", 401, None, "token required"),
    Case("GET", "/openapi.json", 200),
    Case("GET", "/v2", 200),
    Case("GET", "/v2/health/live", 200),
    Case("GET", "/v2/health/ready", 200),
    Case("GET", "/v2/health/ready", 503, None, "shutting down"),
    Case("GET", "/v2/models/nope", 404),
    Case("GET", "/v2/models/dwsep/versions/2", 404),
    Case("GET", "/v2/models/nope/ready", 404),
    Case("GET", "/v2/models/dwsep/versions/2/ready", 404),
    Case("POST", "/v2/models/nope/infer", 404, tensor_request),
    Case("POST", "/v2/models/dwsep/versions/2/infer", 404, tensor_request),
    *[case for model in V2_MODEL_URLS for case in (
        Case("GET", model, 200),
        Case("GET", f"{model}/ready", 200),
        Case("GET", f"{model}/ready", 503, None, "model not warmed"),
        Case("POST", f"{model}/infer", 200, tensor_request),
        Case("POST", f"{model}/infer", 200,
             lambda jpeg: tensor_request(jpeg, 2, id="request-1", outputs=[{"name": "logits"}])),
        Case("POST", f"{model}/infer", 200, lambda jpeg: tensor_request(jpeg, parameters={"binary_data_output": True})),
        Case("POST", f"{model}/infer", 200, lambda jpeg: {**tensor_request(jpeg), "headers": AUTH}, "token required"),
        Case("POST", f"{model}/infer", 400, lambda jpeg: tensor_request(jpeg, outputs=[{"name": "nope"}])),
        Case("POST", f"{model}/infer", 400, lambda jpeg: raw(b"{not json", "application/json")),
        Case("POST", f"{model}/infer", 401, tensor_request, "token required"),
        Case("POST", f"{model}/infer", 408, lambda jpeg: stalled("application/json")),
        Case("POST", f"{model}/infer", 413, lambda jpeg: tensor_request(jpeg, MAX_BATCH + 1)),
        Case("POST", f"{model}/infer", 415, lambda jpeg: raw(b"{}", "text/plain")),
        Case("POST", f"{model}/infer", 500, tensor_request, "model failing"),
        Case("POST", f"{model}/infer", 503, tensor_request, "body budget full"),
    )],
]


# --- checking an answer against the document ---------------------------------------------------------------------

def template_of(spec: dict, url: str) -> str:
    """The documented path template a request URL falls under (exactly one)."""
    path = url.split("?")[0]
    matches = [template for template in spec["paths"]
               if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path)]
    assert len(matches) == 1, f"{path} matches the documented paths {matches}"
    return matches[0]


def resolve(spec: dict, node: dict) -> dict:
    """``node``, or what its ``$ref`` (a local JSON pointer such as #/components/headers/RequestId) points to."""
    while "$ref" in node:
        target = spec
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def closed(schema):
    """A copy of a schema in which an object that lists its properties allows no others.

    So a field the service sends but the document leaves out fails the test, while the published
    document itself stays open to fields added later (clients should tolerate those).
    """
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


def schema_errors(spec: dict, schema: dict, instance) -> list[str]:
    # The components ride along at the schema's root, so its "#/components/schemas/..." references resolve.
    validator = jsonschema.Draft202012Validator({**closed(schema), "components": closed(spec["components"])})
    return [f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
            for error in validator.iter_errors(instance)]


def assert_documented(spec: dict, method: str, url: str, response) -> None:
    """The answer's status, headers and body are what the document says this operation answers."""
    operation = spec["paths"][template_of(spec, url)].get(method.lower())
    assert operation is not None, f"{method} {url} is not documented"
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, (f"{method} {url} answered {response.status_code}, which is not documented "
                                    f"(documented: {sorted(operation['responses'])}): {response.get_data()[:300]!r}")
    documented = resolve(spec, documented)
    for name in SERVICE_HEADERS:
        if name in response.headers:
            assert name in documented.get("headers", {}), f"{method} {url} {response.status_code}: {name} undocumented"
    for name, header in documented.get("headers", {}).items():
        header = resolve(spec, header)
        if header.get("required"):
            assert name in response.headers, f"{method} {url} {response.status_code}: no {name} header"
            errors = schema_errors(spec, header["schema"], response.headers[name])
            assert not errors, f"{method} {url} {response.status_code}: header {name}: {errors}"
    content = documented.get("content", {})
    media_types = [media for media in content if fnmatch.fnmatchcase(response.mimetype, media)]
    assert media_types, f"{method} {url} {response.status_code}: {response.mimetype} is not among {sorted(content)}"
    if response.mimetype == "application/json":
        errors = schema_errors(spec, content["application/json"]["schema"], response.get_json())
        assert not errors, f"{method} {url} {response.status_code} body {response.get_json()}: {errors}"


# --- the tests ----------------------------------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1(spec):
    assert spec["openapi"] == "3.1.0"
    validate(spec, cls=OpenAPIV31SpecValidator)  # raises, naming the first problem


def operations_served(app):
    """(documented path, method, Flask endpoint) of every route the app answers."""
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield path, method.lower(), rule.endpoint


def test_openapi_describes_every_endpoint(app, spec):
    for path, method, _ in operations_served(app):
        assert method in spec["paths"].get(path, {}), f"{method} {path} missing from /openapi.json"
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            assert "200" in operation["responses"], path


def test_exactly_the_operations_that_need_api_token_have_bearer_security_and_401(app, spec):
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, method, endpoint in operations_served(app):
        operation = spec["paths"][path][method]
        guarded = endpoint in PROTECTED_ENDPOINTS
        assert (operation.get("security") == [{"bearerAuth": []}]) == guarded, f"{method} {path}"
        assert ("401" in operation["responses"]) == guarded, f"{method} {path}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_real_answers_match_the_document(app, client, spec, monkeypatch, request, case):
    if case.state:
        STATES[case.state](app, monkeypatch)
    # only a case with a body needs the JPEG (and so the CIFAR-10 archive)
    arguments = case.body(request.getfixturevalue("jpeg")) if case.body else {}
    response = client.open(case.url, method=case.method, **arguments)
    assert response.status_code == case.status, response.get_data(as_text=True)[:500]
    assert_documented(spec, case.method, case.url, response)


def test_every_documented_answer_is_produced_by_a_case(spec):
    produced = {(template_of(spec, case.url), case.method.lower(), str(case.status)) for case in CASES}
    documented = {(path, method, status) for path, operations in spec["paths"].items()
                  for method, operation in operations.items() for status in operation["responses"]}
    assert documented <= produced, f"documented, but no case checks it: {sorted(documented - produced)}"
