"""The cluster manifests in deploy/k8s/: validated offline, and rendered for a registry.

    python tools/k8s_manifests.py validate [FILE...] [--kserve-crd CRD.yaml]
    python tools/k8s_manifests.py render --image REGISTRY/cifar10-serving:TAG [--storage-uri URI] --out build/k8s

``validate`` checks every document of deploy/k8s/*.yaml (and deploy/k8s/kserve/*.yaml) and prints one line
per document:

- Kubernetes' own kinds against the API schemas of Kubernetes ``K8S_VERSION`` (pinned below) with
  ``kubernetes-validate`` in strict mode: a misspelt or misplaced field is an error, as it is for
  ``kubectl apply --validate=strict``.
- The Deployment also against what the service needs (``deployment_problems``): probes on /readyz and
  /healthz, WORKERS from the CPU limit, one onnxruntime thread per worker, non-root, a read-only root with
  /tmp writable, API_TOKEN from a Secret, and a termination grace period that covers the preStop sleep,
  DRAIN_SECONDS and GRACEFUL_TIMEOUT.
- KServe's InferenceService: kubernetes-validate has no schema for custom resources, and KServe's CRD is
  not published on the package index, so it is checked by what KServe's v1beta1 API defines
  (``inference_service_problems``): the predictor is a core/v1 PodSpec plus KServe's fields, its ``model``
  a core/v1 Container plus KServe's fields; the Kubernetes parts are validated strictly against the same
  pinned schemas, KServe's own fields by name, type and allowed values, and the model format, runtime and
  protocol against the kserve-tritonserver runtime. With ``--kserve-crd`` (KServe's
  ``serving.kserve.io_inferenceservices.yaml``, from a KServe release) it is also validated against that
  CRD's schema, unknown fields refused.

``render`` writes the manifests with the Deployment's image (and the InferenceService's storageUri) set,
validated, to ``--out``: ``kubectl apply -f build/k8s/`` then deploys them (``kubectl apply -f
build/k8s/kserve/`` the InferenceService). Exit status 1 on any problem.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.33"  # the Kubernetes release the manifests are validated against (kubernetes-validate's schemas)
CONTAINER = "serving"  # the Deployment's container
SERVICE_PORT = 8000  # the image's PORT

# KServe v1beta1 (serving.kserve.io), as its InferenceService CRD defines it (checked against v0.20.0's).
KSERVE_API = "serving.kserve.io/v1beta1"
# ComponentExtensionSpec and the predictor's own fields: everything else of a predictor is a core/v1 PodSpec.
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas": int, "maxReplicas": int, "scaleTarget": int, "scaleMetric": str, "scaleMetricType": str,
    "containerConcurrency": int, "timeout": int, "canaryTrafficPercent": int, "labels": dict, "annotations": dict,
    "logger": dict, "batcher": dict, "deploymentStrategy": dict, "autoScaling": dict, "workerSpec": dict,
    "storageUris": list, "storageContainerName": str,
}
KSERVE_SCALE_METRICS = ("cpu", "memory", "concurrency", "rps")
KSERVE_MODEL_KEYS = ("model", "triton", "onnx", "sklearn", "xgboost", "tensorflow", "pytorch", "lightgbm", "paddle",
                     "pmml", "huggingface")
# ModelSpec: a core/v1 Container plus these.
KSERVE_MODEL_FIELDS = {"modelFormat": dict, "runtime": str, "storageUri": str, "runtimeVersion": str,
                       "protocolVersion": str, "storage": dict}
KSERVE_STORAGE_SCHEMES = ("gs://", "s3://", "pvc://", "hdfs://", "webhdfs://", "https://", "http://", "oci://",
                          "hf://")
# The kserve-tritonserver ClusterServingRuntime (KServe's config/runtimes/kserve-tritonserver.yaml).
TRITON_RUNTIME = "kserve-tritonserver"
TRITON_MODEL_FORMATS = ("tensorrt", "tensorflow", "onnx", "pytorch", "triton")
TRITON_PROTOCOLS = ("v2", "grpc-v2")

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {"m": 1e-3, None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("500m", "2", "1Gi") as a number; ValueError when it is not one."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def documents(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def manifest_files(folder: Path = DEPLOY) -> list[Path]:
    return sorted(folder.glob("*.yaml")) + sorted(folder.glob("kserve/*.yaml"))


def name_of(doc: dict) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


# ---- Kubernetes' own kinds ----------------------------------------------------------------------------------

def kubernetes_problems(doc: dict, version: str = K8S_VERSION) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top level)"
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def _core_schema_problems(value: dict, definition: str, where: str, version: str = K8S_VERSION) -> list[str]:
    """``value`` against one core definition (e.g. ``io.k8s.api.core.v1.Container``) of the pinned strict schemas."""
    import jsonschema
    import kubernetes_validate.utils as kv
    from referencing import Registry, Resource

    schema_dir = f"kubernetes-json-schema/v{version}.0-local-strict"
    definitions = kv.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ Registry()
    schema = {"$schema": definitions["$schema"], "$ref": f"{definitions['$id']}#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join([where, *map(str, error.path)])}: {error.message}" for error in validator.iter_errors(value)]


# ---- what the service needs of its Deployment ----------------------------------------------------------------

def _env(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def _http_probe_path(container: dict, probe: str) -> str | None:
    return ((container.get(probe) or {}).get("httpGet") or {}).get("path")


def _prestop_seconds(container: dict) -> float:
    """Seconds the preStop hook takes: ``sleep N`` (exec) or the sleep action; 0 when there is none."""
    pre_stop = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = (pre_stop.get("exec") or {}).get("command") or []
    if len(command) == 2 and command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep"):
        return float(command[1])
    return 0.0


def deployment_problems(doc: dict) -> list[str]:
    from serving.config import Settings

    problems = []
    pod = doc["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    if CONTAINER not in containers:
        return [f"no container named {CONTAINER!r}"]
    container = containers[CONTAINER]
    env = _env(container)
    if _http_probe_path(container, "readinessProbe") != "/readyz":
        problems.append("the readiness probe must GET /readyz (503 while the models load and while draining)")
    if _http_probe_path(container, "livenessProbe") != "/healthz":
        problems.append("the liveness probe must GET /healthz")
    if _http_probe_path(container, "startupProbe") not in ("/readyz", "/healthz"):
        problems.append("a startup probe must cover model loading (GET /readyz)")
    if SERVICE_PORT not in [p.get("containerPort") for p in container.get("ports", [])]:
        problems.append(f"the container must expose the image's port {SERVICE_PORT}")

    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            value = (resources.get(kind) or {}).get(resource)
            if value is None:
                problems.append(f"resources.{kind}.{resource} must be set")
                continue
            try:
                quantity(value)
            except ValueError as exc:
                problems.append(f"resources.{kind}.{resource}: {exc}")
    workers = (env.get("WORKERS") or {}).get("valueFrom", {}).get("resourceFieldRef", {})
    if workers.get("resource") != "limits.cpu" or workers.get("containerName", CONTAINER) != CONTAINER \
            or quantity(workers.get("divisor", "1")) != 1:
        problems.append("WORKERS must come from this container's limits.cpu (resourceFieldRef, divisor 1)")
    if (env.get("INTRA_OP_THREADS") or {}).get("value") != "1":
        problems.append("INTRA_OP_THREADS must be 1: without it each worker takes a share of all the node's cores, "
                        "not of the CPU limit")
    token = (env.get("API_TOKEN") or {}).get("valueFrom", {}).get("secretKeyRef")
    if not token or "value" in env.get("API_TOKEN", {}):
        problems.append("API_TOKEN must come from a Secret (secretKeyRef), never a literal value")

    pod_security = pod.get("securityContext") or {}
    security = container.get("securityContext") or {}
    run_as = security.get("runAsUser", pod_security.get("runAsUser"))
    if not security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) or run_as in (None, 0):
        problems.append("the pod must run as a non-root user (runAsNonRoot, runAsUser the image's 10001)")
    if not security.get("readOnlyRootFilesystem"):
        problems.append("the root filesystem must be read-only (readOnlyRootFilesystem)")
    if security.get("allowPrivilegeEscalation", True):
        problems.append("allowPrivilegeEscalation must be false")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
    if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
        problems.append("/tmp must be an emptyDir (the service's metrics files live there)")

    def setting(name: str) -> float:
        if name in env and "value" in env[name]:
            return float(env[name]["value"])
        return float(getattr(Settings(), name.lower()))

    needed = _prestop_seconds(container) + setting("DRAIN_SECONDS") + setting("GRACEFUL_TIMEOUT")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < math.ceil(needed) + 2:
        problems.append(f"terminationGracePeriodSeconds {grace} does not cover preStop + DRAIN_SECONDS + "
                        f"GRACEFUL_TIMEOUT ({needed:g} s) with 2 s to spare")
    return problems


# ---- KServe's InferenceService -------------------------------------------------------------------------------

def _typed_fields(spec: dict, fields: dict[str, type], where: str) -> list[str]:
    problems = []
    for key, kind in fields.items():
        if key in spec and not isinstance(spec[key], kind):
            problems.append(f"{where}.{key} must be a {kind.__name__}")
    return problems


def inference_service_problems(doc: dict) -> list[str]:
    problems = []
    if doc.get("apiVersion") != KSERVE_API:
        problems.append(f"apiVersion must be {KSERVE_API}")
    problems += _core_schema_problems(doc.get("metadata", {}), "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
                                      "metadata")
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", name):
        problems.append("metadata.name must be a DNS label of at most 45 characters (KServe's limit)")
    spec = doc.get("spec") or {}
    unknown = set(spec) - {"predictor", "transformer", "explainer"}
    if unknown:
        problems.append(f"spec: unknown fields {sorted(unknown)}")
    predictor = spec.get("predictor")
    if not isinstance(predictor, dict):
        return problems + ["spec.predictor is required"]

    problems += _typed_fields(predictor, KSERVE_PREDICTOR_FIELDS, "spec.predictor")
    if "scaleMetric" in predictor and predictor["scaleMetric"] not in KSERVE_SCALE_METRICS:
        problems.append(f"spec.predictor.scaleMetric must be one of {', '.join(KSERVE_SCALE_METRICS)}")
    low, high = predictor.get("minReplicas", 1), predictor.get("maxReplicas", 0)
    if isinstance(low, int) and isinstance(high, int) and (low < 0 or (high and high < low)):
        problems.append("spec.predictor: need 0 <= minReplicas <= maxReplicas")
    models = [key for key in KSERVE_MODEL_KEYS if key in predictor]
    if models != ["model"]:
        problems.append("spec.predictor needs exactly one model, given as `model` (modelFormat + runtime)")
    pod = {k: v for k, v in predictor.items()
           if k not in KSERVE_PREDICTOR_FIELDS and k not in KSERVE_MODEL_KEYS}
    problems += _core_schema_problems({"containers": [], **pod}, "io.k8s.api.core.v1.PodSpec", "spec.predictor")
    model = predictor.get("model")
    if not isinstance(model, dict):
        return problems

    problems += _typed_fields(model, KSERVE_MODEL_FIELDS, "spec.predictor.model")
    container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}}
    problems += _core_schema_problems(container, "io.k8s.api.core.v1.Container", "spec.predictor.model")
    model_format = model.get("modelFormat") or {}
    if set(model_format) - {"name", "version"} or not isinstance(model_format.get("name"), str):
        problems.append("spec.predictor.model.modelFormat must be {name, version} with a name")
    if model_format.get("name") not in TRITON_MODEL_FORMATS or model.get("runtime") != TRITON_RUNTIME:
        problems.append(f"the model must run on the {TRITON_RUNTIME} runtime, in one of its formats "
                        f"({', '.join(TRITON_MODEL_FORMATS)})")
    if model.get("protocolVersion", "v1") not in TRITON_PROTOCOLS:
        problems.append(f"protocolVersion must be one the Triton runtime speaks: {', '.join(TRITON_PROTOCOLS)}")
    uri = model.get("storageUri", "")
    if not isinstance(uri, str) or not uri.startswith(KSERVE_STORAGE_SCHEMES) or uri.rstrip("/").endswith(":/"):
        problems.append(f"storageUri must name the model repository under one of {', '.join(KSERVE_STORAGE_SCHEMES)}")
    for kind in ("requests", "limits"):
        for resource, value in ((model.get("resources") or {}).get(kind) or {}).items():
            try:
                quantity(value)
            except ValueError as exc:
                problems.append(f"spec.predictor.model.resources.{kind}.{resource}: {exc}")
    return problems


def _closed(schema: Any) -> Any:
    """A CRD schema with unknown fields refused (the API server's strict field validation), recursively."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def crd_problems(doc: dict, crd_path: Path) -> list[str]:
    """``doc`` against the CRD's openAPIV3Schema for its version, unknown fields refused."""
    import jsonschema

    (crd,) = [d for d in documents(crd_path) if d.get("kind") == "CustomResourceDefinition"]
    group, version = doc["apiVersion"].split("/")
    if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != doc["kind"]:
        return [f"{crd_path} defines {crd['spec']['names']['kind']} in {crd['spec']['group']}, not this document"]
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        return [f"{crd_path} has no version {version}"]
    schema = _closed(versions[version]["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: validated against Kubernetes' schema
    validator = jsonschema.Draft4Validator(schema)
    return [f"{'.'.join(map(str, e.path)) or '(top level)'}: {e.message}" for e in validator.iter_errors(doc)]


# ---- the command ---------------------------------------------------------------------------------------------

def problems_of(doc: dict, kserve_crd: Path | None = None) -> tuple[str, list[str]]:
    """(what it was checked against, the problems found) for one document."""
    if doc.get("kind") == "InferenceService":
        found = inference_service_problems(doc)
        against = f"KServe {KSERVE_API} fields, Kubernetes {K8S_VERSION} strict for its PodSpec and Container"
        if kserve_crd is not None:
            found += crd_problems(doc, kserve_crd)
            against += f", and the CRD {kserve_crd.name}"
        return against, found
    found = kubernetes_problems(doc)
    if doc.get("kind") == "Deployment" and not found:
        found = deployment_problems(doc)
    return f"Kubernetes {K8S_VERSION}, strict", found


def validate(paths: list[Path], kserve_crd: Path | None = None) -> int:
    failed = 0
    for path in paths:
        for doc in documents(path):
            against, found = problems_of(doc, kserve_crd)
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            if found:
                failed += 1
                for problem in found:
                    print(f"FAIL {shown} {name_of(doc)}: {problem}")
            else:
                print(f"ok   {shown} {name_of(doc)} ({against})")
    return 1 if failed else 0


def render(image: str, out: Path, storage_uri: str | None = None) -> list[Path]:
    """deploy/k8s/ with the Deployment's image (and the InferenceService's storageUri) set, written to ``out``."""
    written = []
    for path in manifest_files():
        docs = copy.deepcopy(documents(path))
        for doc in docs:
            if doc.get("kind") == "Deployment":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    if container["name"] == CONTAINER:
                        container["image"] = image
                        container["imagePullPolicy"] = "IfNotPresent" if "@sha256:" in image else "Always"
            if doc.get("kind") == "InferenceService" and storage_uri:
                doc["spec"]["predictor"]["model"]["storageUri"] = storage_uri
        target = out / path.relative_to(DEPLOY)
        target.parent.mkdir(parents=True, exist_ok=True)
        header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
        target.write_text(header + f"# Rendered by tools/k8s_manifests.py render --image {image}\n"
                          + yaml.safe_dump_all(docs, sort_keys=False))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("validate", help="validate manifests (default: deploy/k8s/)")
    v.add_argument("files", nargs="*", type=Path)
    v.add_argument("--kserve-crd", type=Path, help="KServe's serving.kserve.io_inferenceservices.yaml")
    r = sub.add_parser("render", help="write the manifests with IMAGE, validated")
    r.add_argument("--image", required=True, help="the image reference, e.g. registry.example.com/team/"
                                                   "cifar10-serving:1.0")
    r.add_argument("--storage-uri", help="the Triton model repository for the InferenceService")
    r.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "validate":
        return validate([p.resolve() for p in args.files] or manifest_files(), args.kserve_crd)
    written = render(args.image, args.out, args.storage_uri)
    status = validate([p.resolve() for p in written])
    if status == 0:
        print(f"wrote {len(written)} files to {args.out}: kubectl apply -f {args.out}/ "
              f"(KServe: kubectl apply -f {args.out}/kserve/)")
    return status


if __name__ == "__main__":
    sys.exit(main())
