"""Kubernetes manifests (k8s/), the Dockerfile and the `ray job submit` runtime envs (jobs/), checked offline.

The manifests are a kustomize tree: ``k8s/base/`` (the RayCluster and the four RayJobs, plain values),
``k8s/components/settings/`` (copies the audio PVC name into the volumes) and ``k8s/overlays/<name>/`` (``cpu``,
``gpu``: the image via ``images:``, the storage URI and audio PVC via the generated ConfigMap ``raygenre-settings``,
the GPU workers via patches). Every overlay is rendered with ``kubectl kustomize`` (skipped, saying so, when kubectl
is missing; ``make system-deps`` installs it as root) and every Ray object must validate against KubeRay v1.7.0's
CRD schemas (``$RAYGENRE_SHARED_DIR/kuberay/ray.io_*.yaml``) the way the API server does under kubectl's default
strict field validation (unknown fields are errors), pass a few of the KubeRay operator's own spec checks, and
follow the deployment policy: private head, non-root containers, requests and limits (ephemeral storage too)
everywhere, GPU workers that request GPUs and tolerate GPU taints, one image.

What this cannot check offline: the CEL rules (``x-kubernetes-validations``) of the CRDs (the test asserts the
manifests set none of the fields that carry them), admission webhooks, whether the image exists or builds.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "k8s"
JOBS = REPO / "jobs"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
SETTINGS = "raygenre-settings"  # the generated ConfigMap: RAYGENRE_STORAGE, RAYGENRE_AUDIO_PVC
STORAGE_VAR = "${RAYGENRE_STORAGE}"  # how entrypoints name the storage (a shell variable from SETTINGS)

CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
# KubeRay's own limits (ray-operator/controllers/ray/utils/constant.go, v1.7.0).
MAX_NAME = {"RayCluster": 53, "RayJob": 47}
JOB_COMMANDS = {"featurize", "train", "tune", "label"}
GPU_COMMANDS = {"train", "tune", "label"}  # the jobs overlays/gpu gives a gpu group
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
GiB = 2**30
# Measured driver peaks (bench/scale.py, README "How big a table trains"): train/tune ~1 GiB, flat up to 2.1 GB
# tables; featurize ~0.8 GiB. label's driver is flat but for its resume index: given train's figure.
DRIVER_PEAK = {"featurize": 0.8 * GiB, "train": 1.0 * GiB, "tune": 1.0 * GiB, "label": 1.0 * GiB}
RAY_HEAD_PROCESSES = 1 * GiB  # GCS, raylet, dashboard and agents beside the driver
SPLIT_FILES = 6e9  # the memory-mapped split files at FMA-large (106,574 tracks), built on the driver's node


# ------------------------------------------------------------------------------------------------ rendering
KUSTOMIZE_MIN = (5, 0)  # components, replacements with wildcards, regex patch targets; kubectl >= 1.27 has it


@cache
def kubectl() -> str:
    """The kubectl binary, or a skip saying why these checks did not run (none, or one whose kustomize is too old)."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: the kustomize overlays cannot be rendered here (make system-deps installs "
                    "the apt package kubectl when run as root and an apt source offers it)")
    out = subprocess.run([found, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"Kustomize Version: v(\d+)\.(\d+)", out)
    if m is None or (int(m.group(1)), int(m.group(2))) < KUSTOMIZE_MIN:
        pytest.skip(f"{found}: its kustomize ({m.group(0) if m else 'none reported'}) is older than v"
                    f"{'.'.join(map(str, KUSTOMIZE_MIN))}, which k8s/ needs (kubectl >= 1.27)")
    return found


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize FOLDER`` prints (offline: it reads only the folder tree)."""
    proc = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder}: {proc.stderr.strip()}"
    return [d for d in yaml.load_all(proc.stdout, Loader=LOADER) if d is not None]


def named(docs: list[dict[str, Any]], label: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple((f"{label}: {d.get('kind')}/{d.get('metadata', {}).get('name')}", d) for d in docs)


@cache
def rendered(overlay: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(where, document) for every object ``k8s/overlays/<overlay>`` renders to."""
    return named(kustomize(K8S / "overlays" / overlay), overlay)


def ray_docs(docs: tuple[tuple[str, dict[str, Any]], ...]) -> list[tuple[str, dict[str, Any]]]:
    return [(w, d) for w, d in docs if d.get("kind") in CRD_FILES]


def docs_of(docs: tuple[tuple[str, dict[str, Any]], ...], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(w, d) for w, d in docs if d.get("kind") == kind]


def job_named(docs: tuple[tuple[str, dict[str, Any]], ...], command: str) -> dict[str, Any]:
    matches = [d for _, d in docs_of(docs, "RayJob") if d["metadata"]["name"] == f"raygenre-{command}"]
    assert len(matches) == 1, f"expected one RayJob raygenre-{command}, found {len(matches)}"
    return matches[0]


def settings(docs: tuple[tuple[str, dict[str, Any]], ...]) -> dict[str, str]:
    """The data of the generated ConfigMap raygenre-settings."""
    maps = [d for _, d in docs_of(docs, "ConfigMap") if d["metadata"]["name"] == SETTINGS]
    assert len(maps) == 1, f"expected one ConfigMap {SETTINGS}, found {len(maps)}"
    return maps[0]["data"]


def cluster_specs(docs: tuple[tuple[str, dict[str, Any]], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, RayClusterSpec) of the RayCluster and of every RayJob's rayClusterSpec."""
    for where, doc in docs:
        if doc.get("kind") == "RayCluster":
            yield where, doc["spec"]
        elif doc.get("kind") == "RayJob":
            yield f"{where} rayClusterSpec", doc["spec"]["rayClusterSpec"]


def pod_templates(docs: tuple[tuple[str, dict[str, Any]], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every head, worker group and RayJob submitter."""
    for where, spec in cluster_specs(docs):
        yield f"{where} head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"{where} group {group['groupName']}", group["template"]
    for where, doc in docs_of(docs, "RayJob"):
        if "submitterPodTemplate" in doc["spec"]:
            yield f"{where} submitter", doc["spec"]["submitterPodTemplate"]


def containers(docs: tuple[tuple[str, dict[str, Any]], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, container) for every container and init container, plus each autoscaler sidecar's options."""
    for where, template in pod_templates(docs):
        for field in ("containers", "initContainers"):
            for c in template["spec"].get(field, []):
                yield f"{where} {field[:-1]} {c['name']}", c
    for where, spec in cluster_specs(docs):
        if spec.get("enableInTreeAutoscaling"):
            yield f"{where} autoscaler", spec.get("autoscalerOptions", {})


def manifest_files() -> list[Path]:
    """Every YAML file under k8s/ that holds objects or patches (not the kustomization files)."""
    return sorted(p for p in [*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")] if p.name != "kustomization.yaml")


overlay_param = pytest.mark.parametrize("overlay", OVERLAYS)


# -------------------------------------------------------------------------------------------- CRD validation
def shared_kuberay_dir() -> Path:
    return Path(os.environ.get("RAYGENRE_SHARED_DIR", REPO.parent / "shared")) / "kuberay"


def k8s_schema(node: Any, cel_paths: list[str], path: str = "") -> Any:
    """An OpenAPI v3 CRD schema as a JSON Schema (2020-12) that behaves like the API server's checks.

    ``x-kubernetes-int-or-string`` -> integer or string; ``nullable`` -> also null; ``format: int32/int64`` ->
    range; ``x-kubernetes-list-type: set`` -> unique items; objects with ``properties`` reject unknown fields
    unless ``x-kubernetes-preserve-unknown-fields`` (kubectl's default ``--validate=strict``). CEL rules
    (``x-kubernetes-validations``) cannot be evaluated here: their paths are collected in ``cel_paths``.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: k8s_schema(v, cel_paths, f"{path}.{k}") for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = k8s_schema(value, cel_paths, f"{path}[]")
        elif key == "additionalProperties" and isinstance(value, dict):
            out[key] = k8s_schema(value, cel_paths, f"{path}{{}}")
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [k8s_schema(v, cel_paths, path) for v in value]
        elif key == "not":
            out[key] = k8s_schema(value, cel_paths, path)
        elif key == "x-kubernetes-validations":
            cel_paths.append(path)
        elif key != "description":
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    bits = {"int32": 31, "int64": 63}.get(node.get("format", ""))
    if bits and node.get("type") == "integer":
        out["minimum"] = max(out.get("minimum", -(2**bits)), -(2**bits))
        out["maximum"] = min(out.get("maximum", 2**bits - 1), 2**bits - 1)
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if ("properties" in out and "additionalProperties" not in out
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
    """``x-kubernetes-list-type: map``: no two items may share their key fields (defaults applied)."""
    if not validator.is_type(instance, "array"):
        return
    props = schema.get("items", {}).get("properties", {})
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, props.get(k, {}).get("default")) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(
                f"items {seen[key]} and {i} have the same key {dict(zip(keys, key, strict=True))}")
        seen.setdefault(key, i)


K8sValidator = jsonschema.validators.extend(jsonschema.Draft202012Validator,
                                            {"x-kubernetes-list-map-keys": _list_map_keys})


def object_schema(kind: str, crd_schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's v1 schema plus what the API server checks itself: apiVersion, kind and ObjectMeta."""
    schema = dict(crd_schema)
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    props = dict(schema["properties"])
    props["apiVersion"] = {"const": "ray.io/v1"}
    props["kind"] = {"const": kind}
    string_map = {"type": "object", "additionalProperties": {"type": "string"}}
    props["metadata"] = {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            # KubeRay rejects names that are not DNS-1035 labels or longer than these.
            "name": {"type": "string", "pattern": DNS1035.pattern, "maxLength": MAX_NAME[kind]},
            "namespace": {"type": "string", "pattern": DNS1035.pattern.replace("[a-z]([", "[a-z0-9]([")},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63,
                                                                  "pattern": LABEL_VALUE}},
            "annotations": string_map,
        },
    }
    schema["properties"] = props
    return schema


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    """kind -> (validator, CEL paths), from the KubeRay CRDs in the shared folder."""
    folder = shared_kuberay_dir()
    missing = [name for name in CRD_FILES.values() if not (folder / name).is_file()]
    if missing:
        message = (f"KubeRay CRD schemas missing in {folder}: {', '.join(missing)}. They are needed to validate "
                   "k8s/ offline: put KubeRay v1.7.0's ray-operator/config/crd/bases/ files there, point "
                   "RAYGENRE_SHARED_DIR at the folder holding kuberay/, or set RAYGENRE_ALLOW_MISSING_SHARED=1 "
                   "to skip the schema checks.")
        if os.environ.get("RAYGENRE_ALLOW_MISSING_SHARED") == "1":
            pytest.skip(message)
        pytest.fail(message)
    out = {}
    for kind, name in CRD_FILES.items():
        with open(folder / name) as f:
            crd = yaml.load(f, Loader=LOADER)
        assert crd["spec"]["names"]["kind"] == kind, f"{name} is not the {kind} CRD"
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        cel: list[str] = []
        schema = object_schema(kind, k8s_schema(version["schema"]["openAPIV3Schema"], cel))
        out[kind] = (K8sValidator(schema), cel)
    return out


def json_path(parts: Any) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or "<document>"


def schema_errors(doc: dict[str, Any], validators: dict[str, Any]) -> list[str]:
    """Readable schema violations of one document: ``path: message``; empty when valid."""
    kind = doc.get("kind")
    if kind not in validators:
        return [f"kind: {kind!r} is not one of {sorted(validators)} (no CRD schema to check it against)"]
    validator, _ = validators[kind]
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{json_path(e.absolute_path)}: {e.message}" for e in errors]


def instance_paths(node: Any, path: str = "") -> Iterator[str]:
    """Schema-style paths (``.a.b[]``) of every value set in a document."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from instance_paths(v, f"{path}.{k}")
    elif isinstance(node, list):
        for v in node:
            yield from instance_paths(v, f"{path}[]")


# --------------------------------------------------------------------------- the operator's own spec checks
def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("500m", "8Gi", 2, "1e3") as a number."""
    m = re.fullmatch(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[numkMGTPE])?", str(value))
    assert m, f"not a Kubernetes quantity: {value!r}"
    factor = {None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
              "E": 1e18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}[m.group(2)]
    return float(m.group(1)) * factor


def operator_errors(doc: dict[str, Any]) -> list[str]:
    """A subset of KubeRay's ValidateRayClusterSpec / ValidateRayJobSpec and of the pod rules kubelet enforces."""
    errs: list[str] = []
    spec = doc["spec"]
    if doc["kind"] == "RayJob":
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            errs.append("activeDeadlineSeconds must be a positive integer")
        if spec.get("ttlSecondsAfterFinished", 0) < 0:
            errs.append("ttlSecondsAfterFinished must be non-negative")
        if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
            errs.append("one of rayClusterSpec or clusterSelector must be set")
        spec = spec.get("rayClusterSpec") or {}
    if not spec:
        return errs
    if (spec.get("authOptions") or {}).get("mode") == "token":
        version = tuple(int(x) for x in re.findall(r"\d+", spec.get("rayVersion", "0"))[:3])
        if version < (2, 52, 0):
            errs.append(f"authOptions.mode token needs rayVersion >= 2.52.0, got {spec.get('rayVersion')!r}")
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    names = [n for n, _ in groups[1:]]
    if len(set(names)) != len(names):
        errs.append(f"worker group names are not unique: {names}")
    for name, group in groups:
        pod = group["template"]["spec"]
        if not pod.get("containers"):
            errs.append(f"group {name}: the pod template has no container")
        clash = set(group.get("rayStartParams", {})) & {"num-cpus", "num-gpus", "memory", "resources"} & {
            k.replace("_", "-") for k in group.get("resources", {})}
        if clash:
            errs.append(f"group {name}: {sorted(clash)} set in both rayStartParams and resources")
        if name != "head":
            lo, hi, n = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1), group.get("replicas", 0)
            if not spec.get("enableInTreeAutoscaling") and ("minReplicas" not in group or "maxReplicas" not in group):
                errs.append(f"group {name}: minReplicas and maxReplicas are required without autoscaling")
            if lo < 0 or hi < 0 or lo > hi or not lo <= n <= hi:
                errs.append(f"group {name}: need 0 <= minReplicas ({lo}) <= replicas ({n}) <= maxReplicas ({hi})")
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    errs.append(f"group {name} container {c['name']}: volumeMount {m['name']!r} has no volume")
            req, lim = c.get("resources", {}).get("requests", {}), c.get("resources", {}).get("limits", {})
            for res in set(req) | set(lim):
                if "/" in res and req.get(res) != lim.get(res):  # extended resources (nvidia.com/gpu)
                    errs.append(f"group {name} container {c['name']}: {res} requests must equal limits")
                elif res in req and res in lim and quantity(req[res]) > quantity(lim[res]):
                    errs.append(f"group {name} container {c['name']}: {res} request exceeds its limit")
    return errs


# ===================================================================================================== tests
STALE = re.compile(r"render\.sh|values\.env|k8s/ray(cluster|job-)")  # the template era's files and paths


def test_kustomize_replaced_the_render_script() -> None:
    assert {"cpu", "gpu"} <= set(OVERLAYS), OVERLAYS
    assert (K8S / "base" / "kustomization.yaml").is_file()
    gone = [p for p in ("k8s/render.sh", "k8s/values.env") if (REPO / p).exists()]
    assert not gone, f"{gone}: replaced by k8s/base + k8s/overlays"
    stale = []
    for path in [REPO / "README.md", REPO / "DEVELOPERS.md", REPO / "Dockerfile", REPO / "Makefile",
                 *K8S.rglob("*"), *(REPO / "docs").rglob("*"), *JOBS.rglob("*"),
                 *[p for p in (REPO / "tests").rglob("*.py") if p.name != "test_k8s.py"]]:
        if path.is_file() and STALE.search(path.read_text(errors="replace")):
            stale.append(str(path.relative_to(REPO)))
    assert not stale, f"still mention k8s/render.sh, values.env or the old k8s/ray*.yaml paths: {stale}"


def test_base_holds_plain_values() -> None:
    """No templating left: the only ``${...}`` in base is the shell variable the entrypoints expand."""
    for path in sorted((K8S / "base").glob("*.yaml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            left = set(re.findall(r"\$\{[^}]*\}", code)) - {STORAGE_VAR}
            assert not left, f"{path.relative_to(REPO)}:{n}: {sorted(left)}"
    kinds = sorted(d["kind"] for d in kustomize(K8S / "base"))
    assert kinds == ["ConfigMap", "RayCluster"] + ["RayJob"] * 4, kinds


@overlay_param
def test_every_overlay_renders_the_ray_objects_and_the_settings(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = sorted(d.get("kind", "?") for _, d in docs)
    assert kinds == ["ConfigMap", "RayCluster"] + ["RayJob"] * 4, kinds
    assert {d["metadata"]["name"] for _, d in docs_of(docs, "RayJob")} == {f"raygenre-{c}" for c in JOB_COMMANDS}
    for where, doc in docs:
        assert "status" not in doc, f"{where}: a manifest must not carry status"
    # `kubectl apply -k OVERLAY -l app.kubernetes.io/component=X` applies one step (k8s/README.md): X picks one object
    components = sorted(d["metadata"].get("labels", {}).get("app.kubernetes.io/component", "?") for _, d in docs)
    assert components == sorted(["settings", "cluster", *JOB_COMMANDS]), components
    data = settings(docs)
    assert set(data) == {"RAYGENRE_STORAGE", "RAYGENRE_AUDIO_PVC"}, data
    assert re.fullmatch(r"[a-z0-9]+://\S+", data["RAYGENRE_STORAGE"]), "RAYGENRE_STORAGE must be a URI"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", data["RAYGENRE_AUDIO_PVC"]), "a PVC name"


@overlay_param
def test_manifests_match_the_kuberay_crd_schemas(validators: dict[str, Any], overlay: str) -> None:
    docs = ray_docs(rendered(overlay))
    problems = [f"{where}: {e}" for where, doc in docs for e in schema_errors(doc, validators)]
    assert not problems, "schema violations:\n" + "\n".join(problems)


@overlay_param
def test_manifests_set_no_field_guarded_by_cel_rules(validators: dict[str, Any], overlay: str) -> None:
    """CEL rules (x-kubernetes-validations) are not evaluated offline: make sure none applies to us."""
    for where, doc in ray_docs(rendered(overlay)):
        _, cel = validators[doc["kind"]]
        hit = set(instance_paths(doc)) & set(cel)
        assert not hit, f"{where} sets {sorted(hit)}, whose CEL rules this offline check cannot evaluate"


@overlay_param
def test_manifests_pass_the_operators_spec_checks(overlay: str) -> None:
    problems = [f"{where}: {e}" for where, doc in ray_docs(rendered(overlay)) for e in operator_errors(doc)]
    assert not problems, "\n".join(problems)


def _broken_train_job() -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(job_named(rendered("gpu"), "train")))


def _set_replicas(d: dict[str, Any]) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"


def _typo(d: dict[str, Any]) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["minReplica"] = 1


def _drop_group_name(d: dict[str, Any]) -> None:
    del d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["groupName"]


def _bad_quantity(d: dict[str, Any]) -> None:
    d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["memory"] = "32 GB"


def _duplicate_port(d: dict[str, Any]) -> None:
    ports = d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"name": "again", "containerPort": ports[0]["containerPort"]})


def _bad_name(d: dict[str, Any]) -> None:
    d["metadata"]["name"] = "raygenre_train"


@pytest.mark.parametrize(("breakage", "path", "message"), [
    (_set_replicas, "spec.rayClusterSpec.workerGroupSpecs[0].replicas", "'two' is not of type 'integer'"),
    (_typo, "spec.rayClusterSpec.workerGroupSpecs[0]", "('minReplica' was unexpected)"),
    (_drop_group_name, "spec.rayClusterSpec.workerGroupSpecs[0]", "'groupName' is a required property"),
    (_bad_quantity, "workerGroupSpecs[0].template.spec.containers[0].resources.limits.memory",
     "'32 GB' does not match"),
    (_duplicate_port, "headGroupSpec.template.spec.containers[0].ports", "have the same key"),
    (_bad_name, "metadata.name", "'raygenre_train' does not match"),
], ids=["wrong-type", "unknown-field", "missing-required", "bad-quantity", "duplicate-list-key", "bad-name"])
def test_a_broken_manifest_fails_with_a_message_naming_the_path(validators: dict[str, Any], breakage: Any,
                                                                path: str, message: str) -> None:
    doc = _broken_train_job()
    assert schema_errors(doc, validators) == []
    breakage(doc)
    errors = schema_errors(doc, validators)
    assert len(errors) == 1, errors
    assert path in errors[0] and message in errors[0], errors[0]

# ------------------------------------------------------------------------- the overlays' settings land
MINE = {"image": ("registry.example/me/raygenre", "9.9.9"), "RAYGENRE_STORAGE": "gs://my-bucket/genres",
        "RAYGENRE_AUDIO_PVC": "my-audio", "gpus": 3}


def set_overlay(root: Path, overlay: str) -> None:
    """Give the copy of ``overlay`` under ``root`` (a copy of k8s/) MINE's image, storage, audio PVC and GPUs, the
    way a user would: its ``images:`` entry, its ConfigMap literals and, in gpu, the patch holding the count."""
    path = root / "overlays" / overlay / "kustomization.yaml"
    kust = yaml.safe_load(path.read_text())
    (image,) = kust["images"]
    image["newName"], image["newTag"] = MINE["image"]
    (generated,) = [g for g in kust["configMapGenerator"] if g["name"] == SETTINGS]
    generated["literals"] = [f"{k}={MINE[k]}" for k in ("RAYGENRE_STORAGE", "RAYGENRE_AUDIO_PVC")]
    path.write_text(yaml.safe_dump(kust))
    count = root / "overlays" / overlay / "gpu-workers.yaml"
    if count.exists():
        ops = yaml.safe_load(count.read_text())
        for op in ops:
            if op["op"] == "replace":  # replicas, minReplicas, maxReplicas of the gpu group
                op["value"] = MINE["gpus"]
        count.write_text(yaml.safe_dump(ops))


@overlay_param
def test_an_overlays_image_storage_and_audio_pvc_land_in_every_object(tmp_path: Path, overlay: str) -> None:
    shutil.copytree(K8S, tmp_path / "k8s")
    set_overlay(tmp_path / "k8s", overlay)
    docs = named(kustomize(tmp_path / "k8s" / "overlays" / overlay), overlay)
    image = ":".join(MINE["image"])
    images = {where: c.get("image") for where, c in containers(docs) if "autoscaler" not in where}
    assert set(images.values()) == {image}, {w: i for w, i in images.items() if i != image}
    assert settings(docs) == {k: MINE[k] for k in ("RAYGENRE_STORAGE", "RAYGENRE_AUDIO_PVC")}
    claims = {f"{where} volume {v['name']}": v["persistentVolumeClaim"]["claimName"]
              for where, t in pod_templates(docs) for v in t["spec"].get("volumes", [])
              if "persistentVolumeClaim" in v}
    assert claims and set(claims.values()) == {MINE["RAYGENRE_AUDIO_PVC"]}, claims
    for where, c in containers(docs):
        if "autoscaler" in where:
            continue
        refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
        assert SETTINGS in refs, f"{where}: envFrom configMapRef {SETTINGS} (the entrypoints read RAYGENRE_STORAGE)"
    if overlay == "gpu":
        counts = {f"raygenre-{c}": g["replicas"] for c in GPU_COMMANDS
                  for g in job_named(docs, c)["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"}
        assert counts == {f"raygenre-{c}": MINE["gpus"] for c in GPU_COMMANDS}, counts
        cluster = docs_of(docs, "RayCluster")[0][1]["spec"]
        gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
        assert gpu["maxReplicas"] == MINE["gpus"], "the RayCluster's gpu group scales up to the jobs' GPU count"


@overlay_param
@pytest.mark.parametrize("command", sorted(JOB_COMMANDS))
def test_job_entrypoints_run_the_raygenre_cli_with_options_it_accepts(overlay: str, command: str) -> None:
    docs = rendered(overlay)
    argv = shlex.split(job_named(docs, command)["spec"]["entrypoint"])
    assert argv[:2] == ["raygenre", command], f"raygenre-{command} must run `raygenre {command}`: {argv}"
    for flag in ("--features", "--out", "--storage", *(["--model"] if command == "label" else [])):
        if flag in argv:
            value = argv[argv.index(flag) + 1]
            assert value.startswith(STORAGE_VAR + "/"), f"raygenre-{command} {flag} {value}: under {STORAGE_VAR}"
    gpu_flags = [a for a in argv if a in ("--gpu", "--gpus-per-trial")]
    if overlay == "gpu" and command in GPU_COMMANDS:
        assert gpu_flags, f"{overlay}: raygenre-{command} must use the GPUs"
    else:
        assert not gpu_flags, f"{overlay}: raygenre-{command} has no GPUs to use"
    if command == "train":
        assert argv[argv.index("--workers") + 1] == "auto", "one Train worker per GPU (per CPU node), not a count"
    check_cli_options(argv)


# ------------------------------------------------------------------------------------------------- policy
@overlay_param
def test_nothing_is_exposed_outside_the_cluster(overlay: str) -> None:
    docs = rendered(overlay)
    for where, doc in docs:
        assert doc["kind"] not in {"Service", "Ingress", "Route", "Gateway", "HTTPRoute"}, where
    for where, spec in cluster_specs(docs):
        head = spec["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP", f"{where}: headGroupSpec.serviceType must be ClusterIP"
        assert not head.get("enableIngress"), f"{where}: no Ingress for the dashboard"
        svc_type = head.get("headService", {}).get("spec", {}).get("type", "ClusterIP")
        assert svc_type == "ClusterIP", f"{where}: head Service type {svc_type}"
        assert (spec.get("authOptions") or {}).get("mode") == "token", f"{where}: Ray token auth must be on"


@overlay_param
def test_every_pod_and_container_runs_as_non_root(overlay: str) -> None:
    docs = rendered(overlay)
    for where, template in pod_templates(docs):
        sc = template["spec"].get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{where}: pod securityContext"
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID"), where
    for where, c in containers(docs):
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 1000, f"{where}: runAsNonRoot/1000"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
        assert not sc.get("privileged"), f"{where}: privileged"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: drop ALL capabilities"


@overlay_param
def test_every_container_has_cpu_memory_and_ephemeral_storage_requests_and_limits(overlay: str) -> None:
    """Ephemeral storage too: Ray spills objects to the container's disk, and kubelet evicts, under disk pressure,
    the pods that use more than they requested first (all of them, when none requests any)."""
    for where, c in containers(rendered(overlay)):
        res = c.get("resources", {})
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory", "ephemeral-storage"} - set(res.get(kind, {}))
            assert not missing, f"{where}: resources.{kind} needs {sorted(missing)}"


def head_resources(spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """The head's Ray container's resources, and its /dev/shm (object store) size limit in bytes."""
    pod = spec["headGroupSpec"]["template"]["spec"]
    ray = pod["containers"][0]
    shm = next(m["name"] for m in ray["volumeMounts"] if m["mountPath"] == "/dev/shm")
    size = next(v for v in pod["volumes"] if v["name"] == shm)["emptyDir"]["sizeLimit"]
    return ray["resources"], quantity(size)


@overlay_param
@pytest.mark.parametrize("command", sorted(JOB_COMMANDS))
def test_job_heads_are_sized_for_their_driver_object_store_and_split_files(overlay: str, command: str) -> None:
    """The head runs the driver (measured peaks: DRIVER_PEAK), Ray's own processes and, in /dev/shm (memory), the
    object store; train and tune build the memory-mapped split files on its disk (~6 GB at FMA-large)."""
    res, shm = head_resources(job_named(rendered(overlay), command)["spec"]["rayClusterSpec"])
    memory = quantity(res["limits"]["memory"])
    need = DRIVER_PEAK[command] + RAY_HEAD_PROCESSES + shm
    assert memory >= need, f"raygenre-{command} head: memory {res['limits']['memory']} < {need / GiB:.1f} GiB"
    assert memory <= 2 * need + 2 * GiB, f"raygenre-{command} head: {res['limits']['memory']} is far above its use"
    disk = quantity(res["requests"]["ephemeral-storage"])
    floor = SPLIT_FILES + 2 * GiB if command in {"train", "tune"} else 2 * GiB  # + logs, runtime env, spilling
    assert disk >= floor, f"raygenre-{command} head: ephemeral-storage {res['requests']['ephemeral-storage']}"


@overlay_param
def test_the_long_lived_clusters_head_takes_any_driver_and_several_tables(overlay: str) -> None:
    (_, doc), = docs_of(rendered(overlay), "RayCluster")
    res, shm = head_resources(doc["spec"])
    assert quantity(res["limits"]["memory"]) >= max(DRIVER_PEAK.values()) + RAY_HEAD_PROCESSES + shm
    assert quantity(res["requests"]["ephemeral-storage"]) >= 2 * SPLIT_FILES, "split files of more than one table"


@overlay_param
def test_ray_containers_get_a_memory_backed_dev_shm(overlay: str) -> None:
    for where, template in pod_templates(rendered(overlay)):
        if "submitter" in where:
            continue
        vols = {v["name"]: v for v in template["spec"].get("volumes", [])}
        ray = template["spec"]["containers"][0]
        mounts = {m["mountPath"]: m["name"] for m in ray.get("volumeMounts", [])}
        assert "/dev/shm" in mounts, f"{where}: mount an emptyDir at /dev/shm for Ray's object store"
        assert vols[mounts["/dev/shm"]].get("emptyDir", {}).get("medium") == "Memory", where


AUDIO_INPUT = {"featurize": 2, "label": 2}  # argv index of the audio input (dataset / library) per command


@overlay_param
@pytest.mark.parametrize("command", sorted(AUDIO_INPUT))
def test_audio_inputs_are_on_a_volume_every_ray_pod_of_the_job_mounts(overlay: str, command: str) -> None:
    """featurize and label read audio as files (the driver lists them, workers decode): a URI would fail there."""
    docs = rendered(overlay)
    job = job_named(docs, command)
    path = shlex.split(job["spec"]["entrypoint"])[AUDIO_INPUT[command]]
    assert "://" not in path, f"raygenre-{command}: audio input {path} must be a mounted path, not a URI"
    spec = job["spec"]["rayClusterSpec"]
    for name, template in [("head", spec["headGroupSpec"]["template"]),
                           *[(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]]:
        vols = {v["name"]: v for v in template["spec"].get("volumes", [])}
        mounts = [m for m in template["spec"]["containers"][0].get("volumeMounts", [])
                  if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert mounts, f"{overlay} raygenre-{command} {name}: nothing mounted at {path}"
        assert mounts[0].get("readOnly") is True, f"raygenre-{command} {name}: mount the audio read-only"
        claim = vols[mounts[0]["name"]].get("persistentVolumeClaim", {})
        assert claim.get("claimName") == settings(docs)["RAYGENRE_AUDIO_PVC"], f"{name}: the settings' audio PVC"


@overlay_param
def test_gpu_workers_request_gpus_tolerate_gpu_taints_and_match_the_gpu_count(overlay: str) -> None:
    docs = rendered(overlay)
    counts: dict[str, int] = {}
    for where, spec in cluster_specs(docs):
        for group in spec.get("workerGroupSpecs", []):
            ray = group["template"]["spec"]["containers"][0]
            res = ray["resources"]
            if group["groupName"] != "gpu":
                assert "nvidia.com/gpu" not in res.get("limits", {}), f"{where}: only the gpu group gets GPUs"
                continue
            assert res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu") == 1, (
                f"{where}: one nvidia.com/gpu per worker pod, in requests and limits")
            pod = group["template"]["spec"]
            assert any(t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
                       for t in pod.get("tolerations", [])), f"{where}: tolerate the nvidia.com/gpu taint"
            assert pod.get("nodeSelector"), f"{where}: a nodeSelector for GPU nodes"
            counts[where] = group["maxReplicas"]
    jobs_with_gpus = {w.split(": ")[1].split(" ")[0] for w in counts if "RayJob/" in w}
    cluster = docs_of(docs, "RayCluster")[0][1]["spec"]
    if overlay != "gpu":
        assert not counts, f"{overlay}: GPU groups {sorted(counts)}"
        return
    assert jobs_with_gpus == {f"RayJob/raygenre-{c}" for c in GPU_COMMANDS}, jobs_with_gpus
    assert len(set(counts.values())) == 1, f"one GPU count everywhere: {counts}"
    for command in ("train", "tune"):
        groups = [g["groupName"] for g in job_named(docs, command)["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
        assert groups == ["gpu"], f"raygenre-{command}: only GPU workers (their CPUs feed the GPUs): {groups}"
    for group in job_named(docs, "train")["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], "a RayJob's cluster is fixed-size"
    assert cluster["enableInTreeAutoscaling"] is True
    gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["minReplicas"] == 0 < gpu["maxReplicas"], "the RayCluster's GPU group scales from zero"


@overlay_param
def test_ray_jobs_clean_up_after_themselves(overlay: str) -> None:
    from ray.runtime_env import RuntimeEnv

    for where, doc in docs_of(rendered(overlay), "RayJob"):
        spec = doc["spec"]
        assert spec.get("shutdownAfterJobFinishes") is True, where
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int), where
        assert spec.get("activeDeadlineSeconds", 0) > 0, where
        assert "rayClusterSpec" in spec and "clusterSelector" not in spec, f"{where}: a RayJob makes its own cluster"
        if "runtimeEnvYAML" in spec:
            runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
            assert isinstance(runtime_env, dict), f"{where}: runtimeEnvYAML must be a YAML mapping"
            RuntimeEnv(**runtime_env)  # raises on fields or types Ray 2.60 does not accept


@overlay_param
def test_one_image_everywhere_and_ray_version_matches_the_pins(overlay: str) -> None:
    docs = rendered(overlay)
    kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    (entry,) = kust["images"]
    image = f"{entry['newName']}:{entry['newTag']}"
    images = {c.get("image", image) for _, c in containers(docs)}  # the autoscaler takes the head's image
    assert images == {image}, images
    written = {m.group(1) for p in manifest_files() for m in re.finditer(r"^\s*-?\s*image:\s*(\S+)", p.read_text(),
                                                                          re.M)}
    assert {w.rsplit(":", 1)[0] for w in written} == {entry["name"]}, f"images: {entry['name']} covers {written}"
    pins = constraint_pins()
    for where, spec in cluster_specs(docs):
        assert spec["rayVersion"] == pins["ray"], f"{where}: rayVersion must be the pinned Ray {pins['ray']}"


def test_storage_comes_only_from_the_settings() -> None:
    """Object-store URIs live in the kustomization files' ConfigMap literals, never in an object or a patch."""
    for path in manifest_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split(" #")[0] if not line.lstrip().startswith("#") else ""
            assert not re.search(r"\b(s3|gs|gcs|abfs|hdfs|file)://", code), (
                f"{path.relative_to(REPO)}:{n}: object-store URI in a manifest; set RAYGENRE_STORAGE in the "
                f"overlay's configMapGenerator")


def test_make_installs_kubectl_for_these_tests() -> None:
    """As root on Debian, ``make`` installs kubectl (like ffmpeg), so the overlays are rendered, not skipped."""
    text = re.sub(r"\\\n", " ", (REPO / "Makefile").read_text())
    deps = text.split("\nsystem-deps:", 1)[1].split("\n\n", 1)[0]
    assert "command -v kubectl" in deps and re.search(r"apt-get install -y\b[^;]*\bkubectl", deps), deps


# ----------------------------------------------------------------------------------------------- CLI
def check_cli_options(argv: list[str]) -> None:
    """Every ``--option`` in ``raygenre SUB ...`` exists on that subcommand (skips subcommands not written yet)."""
    import typer

    from raygenre.cli import app

    group = typer.main.get_command(app)
    sub = group.commands.get(argv[1])  # type: ignore[attr-defined]
    if sub is None:
        pytest.skip(f"`raygenre {argv[1]}` is not in the CLI yet: its options in {argv} are unchecked")
    known = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    unknown = [a.split("=")[0] for a in argv[2:] if a.startswith("-") and a.split("=")[0] not in known]
    assert not unknown, f"`raygenre {argv[1]}` has no option {unknown}; it has {sorted(known)}"


# ----------------------------------------------------------------------------------------------- Dockerfile
def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_pins_match_constraints_and_it_installs_with_them() -> None:
    pins = constraint_pins()
    ins = dockerfile_instructions()
    args = dict(re.match(r"(\w+)=(\S+)", rest).groups() for op, rest in ins if op == "ARG" and "=" in rest)
    assert args["RAY_VERSION"] == pins["ray"], "Dockerfile RAY_VERSION != constraints.txt ray"
    assert args["TORCH_VERSION"] == pins["torch"], "Dockerfile TORCH_VERSION != constraints.txt torch"
    assert args["TORCHAUDIO_VERSION"] == pins["torchaudio"], "Dockerfile TORCHAUDIO_VERSION != constraints.txt"
    base = next(rest for op, rest in ins if op == "FROM")
    assert base.startswith("rayproject/ray:${RAY_VERSION}-"), base
    assert re.fullmatch(r"py3(11|12)(-cpu|-gpu|-cu\d+)?", args["RAY_FLAVOR"]), "Python 3.11/3.12 Ray image"
    runs = [rest for op, rest in ins if op == "RUN"]
    pip = [r for r in runs if "pip install" in r]
    assert pip and "-c constraints.txt" in pip[0], "the dependency install must use -c constraints.txt"
    assert all("-c constraints.txt" in r or "--no-deps" in r for r in pip), "every pip install is pinned"
    assert any("ffmpeg" in r for r in runs), "ffmpeg from apt (M4A/AAC decoding)"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the image must end as the non-root user 1000"


def test_image_needs_no_config_dir_the_package_carries_its_configs() -> None:
    """The defaults are package data: the image copies only the package and sets no config location."""
    copied = []
    for op, rest in dockerfile_instructions():
        assert "RAYGENRE_CONFIG_DIR" not in rest, f"{op} {rest}: the configs travel inside the package"
        if op == "COPY":
            copied += [p.rstrip("/") for p in rest.split() if not p.startswith("--")][:-1]
    assert "raygenre" in copied and "configs" not in copied, copied
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'raygenre = \[[^]]*"configs/\*\.yaml"', pyproject), "configs/*.yaml must be package data"


def test_package_data_carries_every_default_config() -> None:
    """pyproject's package-data globs take every packaged YAML, and the package reads them by resource (so a
    wheel or an image, which holds no repo configs/, has them). A static check: building a wheel needs
    setuptools >= 77 and network-free build isolation, which the test venv does not promise."""
    import fnmatch
    import importlib.resources

    from raygenre.config import SECTIONS

    section = (REPO / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    globs = re.findall(r'"([^"]+)"', re.search(r"^raygenre = \[(.*?)\]", section, re.M).group(1))
    shipped = sorted(p.relative_to(REPO / "raygenre").as_posix() for p in (REPO / "raygenre").rglob("*.yaml"))
    assert {f"configs/{s}.yaml" for s in SECTIONS} <= set(shipped)
    missed = [p for p in shipped if not any(fnmatch.fnmatchcase(p, g) and p.count("/") == g.count("/") for g in globs)]
    assert not missed, f"package-data {globs} leaves out {missed}"
    configs = importlib.resources.files("raygenre") / "configs"
    assert all((configs / f"{s}.yaml").is_file() for s in SECTIONS)
    # The top-level configs/ holds recipes (tests/test_recipes.py), never a second copy of a default file.
    assert not [s for s in SECTIONS if (REPO / "configs" / f"{s}.yaml").exists()], "defaults live once"


def test_dockerignore_keeps_the_context_small_but_admits_every_copied_path() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", ".dockerignore should exclude everything and re-include what the image needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for op, rest in dockerfile_instructions():
        if op == "COPY" and "--from" not in rest:
            for src in [p for p in rest.split() if not p.startswith("--")][:-1]:
                assert src.split("/")[0] in allowed, f".dockerignore drops {src}, which the Dockerfile copies"
    assert not allowed & {".venv", ".git", ".raygenre-home", "bench"}


# -------------------------------------------------------------------------------------------------- jobs/
RUNTIME_ENVS = sorted((JOBS / "runtime-env").glob("*.yaml"))


def test_runtime_env_files_are_valid_for_ray() -> None:
    from ray.runtime_env import RuntimeEnv

    assert {p.name for p in RUNTIME_ENVS} == {"image.yaml", "pip.yaml"}
    for path in RUNTIME_ENVS:
        env = yaml.safe_load(path.read_text())
        RuntimeEnv(**env)  # Ray's own validation of field names and types
        assert env["working_dir"] == ".", f"{path.name}: upload the repo root (run ray job submit from it)"
        assert {".git", ".venv", ".raygenre-home", "bench/out"} <= set(env["excludes"]), path.name
    pip = yaml.safe_load((JOBS / "runtime-env" / "pip.yaml").read_text())["pip"]["packages"]
    assert "-c ${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}/constraints.txt" in pip, "pip variant must use the pins"
    assert "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}" in pip, "pip variant must install the uploaded checkout"


def test_image_runtime_env_needs_no_config_setting() -> None:
    """The uploaded code carries its configs (package data): no env var points raygenre elsewhere."""
    from raygenre.config import default_file

    env = yaml.safe_load((JOBS / "runtime-env" / "image.yaml").read_text())
    assert "RAYGENRE_CONFIG_DIR" not in (env.get("env_vars") or {})
    assert Path(str(default_file("train"))) == REPO / "raygenre" / "configs" / "train.yaml"


@pytest.mark.parametrize("path", RUNTIME_ENVS, ids=lambda p: p.name)
def test_working_dir_package_is_small_and_holds_the_code(path: Path, tmp_path: Path) -> None:
    """Package the repo exactly as `ray job submit` would (without .gitignore's help) and look inside."""
    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import _zip_files

    env = yaml.safe_load(path.read_text())
    pkg = tmp_path / "pkg.zip"
    _zip_files(str(REPO), get_runtime_env_default_excludes() + env["excludes"], str(pkg), include_gitignore=False)
    with zipfile.ZipFile(pkg) as z:
        names = z.namelist()
        sizes = sorted(((i.file_size, i.filename) for i in z.infolist()), reverse=True)
    assert {"raygenre/cli.py", "raygenre/config.py", "raygenre/configs/train.yaml", "constraints.txt",
            "pyproject.toml"} <= set(names)
    recipes = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").glob("*.yaml")}
    assert recipes and recipes <= set(names), "the configs/ recipes' ray job submit commands need them uploaded"
    heavy = [n for n in names if n.split("/")[0] in {".venv", ".git", ".raygenre-home"} or n.startswith("bench/out")]
    assert not heavy, heavy[:5]
    size = pkg.stat().st_size
    assert size < 32 * 2**20, f"working_dir package is {size / 2**20:.1f} MiB; largest files: {sizes[:5]}"


def test_jobs_readme_commands_use_existing_files_and_real_options() -> None:
    text = (JOBS / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    commands = [ln.strip() for b in blocks for ln in re.sub(r"\\\n", " ", b).splitlines()]
    submits = [c for c in commands if "ray job submit" in c]
    assert submits, "jobs/README.md shows no `ray job submit` line"
    for c in submits:
        argv = shlex.split(c.split("#")[0])
        for flag in ("--runtime-env", "--working-dir"):
            if flag in argv:
                assert (REPO / argv[argv.index(flag) + 1]).exists(), f"{c}: {flag} names a missing path"
    tail = [shlex.split(c.split(" -- ", 1)[1].split(" #")[0]) for c in submits if " -- raygenre " in c]
    assert {argv[1] for argv in tail} >= JOB_COMMANDS, "show a submit line for every raygenre job"
    unchecked = []
    for argv in tail:
        try:
            check_cli_options(argv)
        except pytest.skip.Exception as exc:
            unchecked.append(str(exc))
    if unchecked:
        pytest.skip("; ".join(unchecked))
