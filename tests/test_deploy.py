"""deploy/k8s/: the manifests validate offline (Kubernetes' schemas, strict; KServe's v1beta1 fields), what the
service needs of its Deployment holds, the README's deploy commands are the ones run here, and a wrong
manifest is refused. The container itself is checked by `make image-test` (tools/image_test.py), which
`make test` runs after pytest.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import image_test  # noqa: E402
import k8s_manifests  # noqa: E402

pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra: make dev")

DEPLOY = ROOT / "deploy" / "k8s"
VALIDATE = [sys.executable, "tools/k8s_manifests.py", "validate"]


def readme_deploy_commands() -> list[str]:
    """The shell lines of the README's "Deploy" section's code blocks (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.startswith("#")]


def the(kind: str, folder: Path = DEPLOY) -> dict:
    (doc,) = [d for path in k8s_manifests.manifest_files(folder) for d in k8s_manifests.documents(path)
              if d["kind"] == kind]
    return doc


def run_validate(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*VALIDATE, *map(str, paths)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_every_manifest_validates_strictly_against_the_pinned_kubernetes():
    done = run_validate()
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    kinds = ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "InferenceService")
    for kind in kinds:
        (line,) = [line for line in lines if f" {kind}/" in line]
        assert line.startswith("ok   ")
    assert f"Kubernetes {k8s_manifests.K8S_VERSION}, strict" in done.stdout
    assert len(lines) == len(kinds)


def validate_broken(tmp_path, kind: str, breakage):
    """The committed manifest of this kind, broken one way, written out and validated."""
    document = copy.deepcopy(the(kind))
    breakage(document)
    path = tmp_path / f"{kind.lower()}.yaml"
    path.write_text(yaml.safe_dump(document))
    return run_validate(path)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readynessProbe={}), "readynessProbe"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"].update(limit={"cpu": "2"}), "'limit'"),
    (lambda d: d["spec"].update(replicas="two"), "replicas"),
    (lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=12),
     "does not cover preStop + DRAIN_SECONDS + GRACEFUL_TIMEOUT"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "DRAIN_SECONDS", "value": "30"})
     or d["spec"]["template"]["spec"]["containers"][0]["env"].pop(2), "does not cover"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].pop("readOnlyRootFilesystem"),
     "read-only"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].pop(0), "WORKERS"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][-1].update(value="hunter2")
     or d["spec"]["template"]["spec"]["containers"][0]["env"][-1].pop("valueFrom"), "Secret"),
])
def test_a_wrong_deployment_is_refused(tmp_path, breakage, message):
    done = validate_broken(tmp_path, "Deployment", breakage)
    assert done.returncode == 1 and "FAIL" in done.stdout and message in done.stdout, done.stdout


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d["spec"]["predictor"]["model"].update(storageURI="s3://x/triton"), "storageURI"),
    (lambda d: d["spec"]["predictor"]["model"]["resources"]["limits"].update(memory="2GB"), "quantity"),
    (lambda d: d["spec"]["predictor"].update(scaleMetric="latency"), "scaleMetric"),
    (lambda d: d["spec"]["predictor"]["model"]["modelFormat"].update(name="sklearn"), "kserve-tritonserver"),
    (lambda d: d["spec"]["predictor"]["model"].update(protocolVersion="v1"), "protocolVersion"),
    (lambda d: d["spec"]["predictor"].update(nodeSelectr={"a": "b"}), "nodeSelectr"),
    (lambda d: d["spec"]["predictor"]["model"].update(storageUri="triton/"), "storageUri"),
])
def test_a_wrong_inference_service_is_refused(tmp_path, breakage, message):
    done = validate_broken(tmp_path, "InferenceService", breakage)
    assert done.returncode == 1 and message in done.stdout, done.stdout


def test_the_deployments_settings_are_ones_the_service_accepts():
    """Every literal setting the Deployment gives, plus WORKERS as the downward API hands it over (the CPU
    limit rounded up to whole cores), parses under the service's own settings table."""
    from serving.config import Settings

    container = the("Deployment")["spec"]["template"]["spec"]["containers"][0]
    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    cpu_limit = k8s_manifests.quantity(container["resources"]["limits"]["cpu"])
    workers = str(int(-(-cpu_limit // 1)))
    settings = Settings.from_environ({**literal, "WORKERS": workers, "API_TOKEN": "from-the-secret"})
    assert settings.workers == int(workers) >= 1 and settings.intra_op_threads == 1
    # CPU request = limit: the pod gets exactly the cores its workers are sized for (Guaranteed QoS with memory)
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert k8s_manifests.deployment_problems(the("Deployment")) == []


def test_the_probes_hpa_pdb_and_service_select_the_deployments_pods():
    deployment = the("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert the("Service")["spec"]["selector"].items() <= labels.items()
    assert the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = the("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = the("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    # the PDB never blocks every disruption: the HPA's floor leaves a pod to evict
    assert the("HorizontalPodAutoscaler")["spec"]["minReplicas"] > 1
    assert the("Service")["spec"]["ports"][0]["targetPort"] == "http"


def test_the_image_test_reads_the_prestop_command_as_yaml_does():
    container = the("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert image_test.prestop_command() == container["lifecycle"]["preStop"]["exec"]["command"]


def test_the_inference_service_serves_the_model_repository_export_writes(tmp_path):
    """What storageUri must hold is what export.triton writes (the layout Triton's --model-store reads):
    <model>/config.pbtxt naming the model, on the onnxruntime backend, and <model>/1/model.onnx."""
    pytest.importorskip("onnx", reason="export.triton needs onnx (the export extra)")
    from export.triton import write_triton_repository

    repo = tmp_path / "triton"
    write_triton_repository(repo, ROOT / "weights" / "dwsep.onnx")
    (folder,) = repo.iterdir()
    config = (folder / "config.pbtxt").read_text()
    assert f'name: "{folder.name}"' in config and 'backend: "onnxruntime"' in config
    assert (folder / "1" / "model.onnx").read_bytes() == (ROOT / "weights" / "dwsep.onnx").read_bytes()
    model = the("InferenceService")["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == k8s_manifests.TRITON_RUNTIME
    assert model["protocolVersion"] == "v2"  # the Open Inference Protocol, as the service's own /v2


def test_the_readmes_deploy_commands_are_the_ones_run(tmp_path):
    """`make image`, `make image-test` (run by `make test`) and `make k8s-manifests IMAGE=...`, run here as the
    README gives it: the Deployment in build/k8s/ names that image, and every file validates."""
    commands = readme_deploy_commands()
    assert "make image" in commands and "make image-test" in commands
    test_recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(MAKE) image-test" in test_recipe
    (render,) = [c for c in commands if c.startswith("make k8s-manifests ")]
    image = re.search(r"IMAGE=(\S+)", render).group(1)
    done = subprocess.run(render, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = ROOT / "build" / "k8s"
    rendered = the("Deployment", out)
    assert rendered["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert {p.name for p in out.glob("*.yaml")} == {p.name for p in DEPLOY.glob("*.yaml")}
    assert (out / "kserve" / "inferenceservice.yaml").exists()
    apply = [c for c in commands if c.startswith("kubectl apply")]
    assert "kubectl apply -f build/k8s/" in apply


# ---- the image test's own logic (tools/image_test.py), which `make image-test` runs against a real container ----

def test_the_exit_status_is_read_as_buildahs_chroot_helper_reports_it():
    panic = "panic: runtime error: invalid memory address or nil pointer dereference\n"
    assert image_test.exit_status("serving on http://0.0.0.0:8000\n" + panic) == 0
    assert image_test.exit_status("cannot start the service: ...\nsubprocess exited with status 1\n" + panic) == 1
    assert image_test.exit_status("subprocess exited on killed\n" + panic) is None
    assert image_test.exit_status("process exited with error: boom") is None


def test_answers_differing_in_labels_order_or_probability_do_not_compare_equal():
    top = [("cat", 0.6), ("dog", 0.3), ("frog", 0.1)]
    reference = {"models": {"m": "ab"}, "default": "m",
                 "predict": {"(default)/cat-0.jpg": {"status": 200, "model": "m", "top": top}}}

    def seen(**change):
        answer = {"status": 200, "model": "m", "top": top, **change}
        return {**reference, "predict": {"(default)/cat-0.jpg": answer}}

    assert image_test.compare(reference, seen())[0]
    assert not image_test.compare(reference, seen(top=[top[1], top[0], top[2]]))[0]
    assert not image_test.compare(reference, seen(top=[("cat", 0.6 + 1e-5), *top[1:]]))[0]
    assert not image_test.compare(reference, seen(status=500))[0]
    assert not image_test.compare(reference, {**seen(), "models": {"m": "cd"}})[0]


def test_gunicorn_is_told_apart_from_buildah_whose_arguments_name_it():
    assert image_test.is_gunicorn(["/opt/python/bin/python", "/opt/python/bin/gunicorn", "--config", "x"])
    assert image_test.is_gunicorn(["gunicorn", "--config", "serving/gunicorn.conf.py", "serving:create_app()"])
    assert not image_test.is_gunicorn(["buildah", "run", "--isolation", "chroot", "c", "--", "gunicorn"])


def test_the_image_test_sends_one_real_test_image_of_every_class():
    jpegs = image_test.test_jpegs()
    assert [label for label, _, _ in jpegs] == list(image_test.CLASSES)
    assert len({name for _, name, _ in jpegs}) == len(jpegs)  # answers are keyed by file name
    assert all(data[:2] == b"\xff\xd8" for _, _, data in jpegs)
