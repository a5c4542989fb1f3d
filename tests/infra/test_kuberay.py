"""infra/kuberay-*.yaml as the KubeRay operator and its pods would take them.

- Schema: each manifest validates against KubeRay's own CRD schema (v1.7.0, from its Helm chart, in
  tests/infra/data). The API server *prunes* unknown fields silently, so a misspelt or misplaced
  field would be dropped without an error; the test turns every structural object schema closed.
- Submitter: the RayJob entrypoint is expanded by bash in the submitter pod with the ConfigMap's
  variables and parsed by the flow's own argument parser and config loader.
- Probes: the HTTP health path the probes use answers 200 on a real Ray node started like the pods.
"""
from __future__ import annotations

import copy
import gzip
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from flows.train_full import build_parser
from tests.ray_cluster import start_cluster
from vidllm.config import load_config

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
CRDS = Path(__file__).parent / "data" / "kuberay-v1.7.0"


def _crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(gzip.decompress((CRDS / f"ray.io_{kind}s.yaml.gz").read_bytes()))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _closed(schema: Any) -> Any:
    """Reject what the API server would prune: objects with `properties` and no escape hatch."""
    if isinstance(schema, dict):
        for key, value in list(schema.items()):
            if key in ("properties", "patternProperties", "definitions"):
                schema[key] = {name: _closed(sub) for name, sub in value.items()}
            elif isinstance(value, (dict, list)):
                schema[key] = _closed(value)
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        return [_closed(item) for item in schema]
    return schema


def _manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((INFRA / name).read_text())


def _configmap() -> dict[str, str]:
    docs = list(yaml.safe_load_all((INFRA / "kuberay-shared.yaml").read_text()))
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "vidllm-config"]
    return cm["data"]


def _errors(kind: str, manifest: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_crd_schema(kind))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest)]


def _ray_cluster_spec(kind: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["rayClusterSpec"] if kind == "rayjob" else manifest["spec"]


MANIFESTS = [("rayjob", "kuberay-rayjob.yaml"), ("raycluster", "kuberay-raycluster.yaml")]


@pytest.mark.parametrize("kind,name", MANIFESTS)
def test_the_manifest_validates_against_the_kuberay_crd_with_no_field_pruned(kind: str, name: str) -> None:
    manifest = _manifest(name)
    assert manifest["kind"].lower() == kind and manifest["apiVersion"] == "ray.io/v1"
    assert _errors(kind, manifest) == []


@pytest.mark.parametrize("kind,name", MANIFESTS)
def test_the_schema_check_catches_misplaced_and_mistyped_fields(kind: str, name: str) -> None:
    spec_path = _ray_cluster_spec(kind, _manifest(name))
    misplaced = copy.deepcopy(_manifest(name))
    cluster = _ray_cluster_spec(kind, misplaced)
    cluster["headGroupSpec"]["authOptions"] = cluster.pop("authOptions")  # belongs on the cluster spec
    assert any("authOptions" in e for e in _errors(kind, misplaced))
    mistyped = copy.deepcopy(_manifest(name))
    _ray_cluster_spec(kind, mistyped)["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in _errors(kind, mistyped))
    assert spec_path["authOptions"] == {"mode": "token"}


@pytest.mark.parametrize("kind,name", MANIFESTS)
def test_pods_run_as_the_image_user_and_gpu_groups_own_the_gpus_ray_is_told_about(kind: str, name: str) -> None:
    uid = int(re.search(r"useradd\b[^\n]*--uid (\d+)", (INFRA / "Dockerfile").read_text()).group(1))
    cluster = _ray_cluster_spec(kind, _manifest(name))
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray, which the operator must match
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    gpu_groups = 0
    for group in groups:
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["fsGroup"] == uid
        (container,) = pod["containers"]
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"] == "/api/healthz"
        limits = container["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            gpu_groups += 1
            assert int(group["rayStartParams"]["num-gpus"]) == int(limits["nvidia.com/gpu"])
            assert limits["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
            assert group["minReplicas"] == 0  # a CPU-only cluster schedules nothing
        else:
            assert "num-gpus" not in group["rayStartParams"]
    assert gpu_groups == 1


def _submitter_env() -> dict[str, str]:
    pod = _manifest("kuberay-rayjob.yaml")["spec"]["submitterPodTemplate"]["spec"]
    (container,) = pod["containers"]
    assert "command" not in container  # KubeRay fills in `ray job submit`
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        assert "secretRef" not in source  # the submitter needs no S3 credentials
        assert source["configMapRef"]["name"] == "vidllm-config"
        env.update(_configmap())
    return env


def _expand(entrypoint: str, env: dict[str, str]) -> list[str]:
    """The entrypoint as bash in the submitter pod passes it on (KubeRay runs it under `bash -c`)."""
    out = subprocess.run(["bash", "-c", f'set -- {entrypoint}; printf "%s\\0" "$@"'],
                         env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=True)
    return out.stdout.split("\0")[:-1]


def test_the_entrypoint_gets_the_configmap_values_in_the_submitter_pod() -> None:
    entrypoint = _manifest("kuberay-rayjob.yaml")["spec"]["entrypoint"]
    env = _submitter_env()
    referenced = set(re.findall(r"\$\{?(VIDLLM_[A-Z_]+)", entrypoint))
    assert referenced and referenced <= set(env), referenced - set(env)

    argv = _expand(entrypoint, env)
    assert argv[:3] == ["python", "-m", "flows.train_full"]
    args = build_parser().parse_args(argv[3:])
    assert args.shards == env["VIDLLM_SHARDS"] and args.cache == env["VIDLLM_TEACHER_CACHE"]
    assert args.ray_train
    cfg = load_config(args.recipe, overrides=args.overrides)
    assert cfg.train.storage_path == env["VIDLLM_RAY_STORAGE"]
    assert cfg.train.num_workers == 2

    # Without the ConfigMap in the submitter (the pod KubeRay builds by default) they would be empty.
    bare = build_parser().parse_args(_expand(entrypoint, {})[3:])
    assert bare.shards == "" and bare.cache == ""
    assert shlex.split(entrypoint)[3:5] == ["--recipe", "demo"]


def test_the_probe_path_answers_on_a_real_ray_node() -> None:
    """The pods start Ray like this (dashboard off on workers); /api/healthz is the dashboard agent's."""
    cluster = start_cluster()
    try:
        probe = _manifest("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
            "containers"][0]["readinessProbe"]["httpGet"]
        # The pods use Ray's default agent port; the test node got a free one for the same server.
        from ray._private import ray_constants
        assert probe["port"] == ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
        url = f"http://127.0.0.1:{cluster.agent_port}{probe['path']}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    body = response.read().decode()
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert "success" in body.lower() or body.strip() != ""
    finally:
        cluster.stop()
