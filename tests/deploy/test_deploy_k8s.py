"""deploy/k8s/: valid against the Kubernetes API schemas, and the pieces reference each other.

Built-in kinds are validated offline with ``kubernetes-validate`` (PyPI; it ships the
OpenAPI schemas of each Kubernetes release) in strict mode, so unknown fields are errors.
The prometheus-operator kinds (ServiceMonitor, PrometheusRule) are CRDs it has no schema
for; they are checked against the schemas below, written from the operator's CRDs for the
fields these manifests may use.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from gateway.cli import build_parser
from gateway.config import load_config
from gateway.policy.schema import load_policy
from gateway.yamlfile import read_yaml
from tests.deploy.artefacts import K8S, ROOT

KUBERNETES_VERSION = "1.30.0"  # the oldest release still widely run that has every API used here

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"],
            "properties": {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}},
        }},
    },
}  # fmt: skip
_METADATA = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}}  # fmt: skip
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "targetLimit": {"type": "integer", "minimum": 0},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "targetPort": {"type": ["string", "integer"]},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": {"type": "object"}},
                        "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                    },
                }},
            },
        },
    },
}  # fmt: skip
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": _DURATION},
                    "limit": {"type": "integer"},
                    "rules": {"type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                        "properties": {
                            "record": {"type": "string", "pattern": r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                            "alert": {"type": "string"},
                            "expr": {"type": ["string", "integer"]},
                            "for": {"type": "string", "pattern": _DURATION},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    }},
                },
            }},
        }},
    },
}  # fmt: skip
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


def kubernetes_validate():
    try:
        import kubernetes_validate as kv
    except ImportError:
        import os

        message = "kubernetes-validate is not installed (pip install kubernetes-validate)"
        if os.environ.get("CI"):
            pytest.fail(message + "; it belongs in the dev dependencies")
        pytest.skip(message)
    return kv


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    out = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc["__file__"] = path.name
                out.append(doc)
    return out


def find(resources: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [r for r in resources if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def selects(selector: dict, labels: dict) -> bool:
    match = selector.get("matchLabels", selector)
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def clean(resource: dict) -> dict:
    return {k: v for k, v in resource.items() if k != "__file__"}


# --------------------------------------------------------------------------- schema


def test_kustomization_lists_every_manifest_and_only_existing_ones():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    assert sorted(listed) == sorted(p.name for p in manifest_files()), "a manifest is missing from kustomization.yaml"


def test_builtin_kinds_validate_strictly_against_the_kubernetes_schemas(resources):
    kv = kubernetes_validate()
    checked = 0
    for resource in resources:
        if resource["kind"] in CRD_SCHEMAS:
            continue
        try:
            kv.validate(clean(resource), KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{resource['__file__']} {resource['kind']}/{resource['metadata']['name']}: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")  # fmt: skip
        checked += 1
    kinds = {r["kind"] for r in resources}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "Secret",
            "StatefulSet", "CronJob", "NetworkPolicy"} <= kinds  # fmt: skip
    assert checked >= 12


def test_the_validator_rejects_a_broken_manifest(resources):
    # A negative control: the strict schemas must catch a wrong type and an unknown field.
    kv = kubernetes_validate()
    deployment = clean(find(resources, "Deployment", "nudge-gateway"))
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    for broken in (wrong_type, typo):
        with pytest.raises(kv.ValidationError):
            kv.validate(broken, KUBERNETES_VERSION, strict=True)


def test_prometheus_operator_kinds_match_their_schemas(resources):
    seen = set()
    for resource in resources:
        schema = CRD_SCHEMAS.get(resource["kind"])
        if schema:
            jsonschema.validate(clean(resource), schema)
            seen.add(resource["kind"])
    assert seen == set(CRD_SCHEMAS)
    bad = copy.deepcopy(clean(find(resources, "ServiceMonitor")))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVICE_MONITOR)


# --------------------------------------------------------------------------- wiring


def gateway_pod(resources) -> tuple[dict, dict, dict]:
    deployment = find(resources, "Deployment", "nudge-gateway")
    pod = deployment["spec"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "gateway")
    return deployment, pod, container


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_value(resources, env: dict) -> str:
    """The value a secretKeyRef env var gets from a Secret of these manifests."""
    ref = env["valueFrom"]["secretKeyRef"]
    return find(resources, "Secret", ref["name"])["stringData"][ref["key"]]


def config_mount(container: dict) -> tuple[dict, str]:
    """The volume mount that holds this container's --config, and the file's key within it."""
    args = container["args"]
    path = args[args.index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/"))
    return mount, path[len(mount["mountPath"].rstrip("/")) + 1 :]


def pod_specs(resources) -> dict[str, dict]:
    """Every pod template of the manifests, by workload: Deployments, StatefulSets, CronJobs."""
    out = {}
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet"):
            out[f"{r['kind']}/{r['metadata']['name']}"] = r["spec"]["template"]
        elif r["kind"] == "CronJob":
            out[f"CronJob/{r['metadata']['name']}"] = r["spec"]["jobTemplate"]["spec"]["template"]
    return out


def test_gateway_deployment_is_replicated_probed_limited_and_non_root(resources):
    deployment, pod, container = gateway_pod(resources)
    assert deployment["spec"]["replicas"] >= 2
    assert selects(deployment["spec"]["selector"], pod["metadata"]["labels"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "admin": 9091}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    pod_sec, sec = pod["spec"]["securityContext"], container["securityContext"]
    assert pod_sec["runAsNonRoot"] is True and pod_sec["seccompProfile"]["type"] == "RuntimeDefault"
    assert sec["allowPrivilegeEscalation"] is False and sec["readOnlyRootFilesystem"] is True
    assert sec["capabilities"]["drop"] == ["ALL"]
    # The image's own user (Dockerfile USER) is the one the pod asks for.
    user = re.search(r"^USER\s+(\d+)(?::(\d+))?", (ROOT / "Dockerfile").read_text(), re.M)
    assert user and pod_sec["runAsUser"] == int(user.group(1))
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    # /metrics lives on the admin listener only (server.admin_port), which no Ingress routes to
    assert int(annotations["prometheus.io/port"]) == ports["admin"] and annotations["prometheus.io/path"] == "/metrics"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert container["image"] in {i["name"] for i in kustomization["images"]}


def test_config_secret_and_policy_configmap_are_mounted_and_valid(resources, tmp_path):
    _, pod, container = gateway_pod(resources)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {m["name"] for m in mounts.values()} <= set(volumes)

    def source(path: str) -> tuple[dict, str]:
        """The volume a path in the container lies on, and the key (file name) within it."""
        for mount_path, mount in mounts.items():
            if path.startswith(mount_path.rstrip("/") + "/"):
                return volumes[mount["name"]], path[len(mount_path.rstrip("/")) + 1 :]
        raise AssertionError(f"{path} is on no volume")

    args = container["args"]
    config_volume, config_key = source(args[args.index("--config") + 1])
    secret = find(resources, "Secret", config_volume["secret"]["secretName"])
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(secret["stringData"][config_key])
    config = load_config(config_file)  # the gateway's own validation
    assert config.server.host == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (config.server.port, config.server.admin_port) == (ports["http"], ports["admin"])
    # the admin port (metrics: key names, teams, costs) is open to the monitoring namespace only
    admin = find(resources, "NetworkPolicy", "nudge-gateway-admin")
    assert selects(admin["spec"]["podSelector"], pod["metadata"]["labels"])
    rules = {r["ports"][0]["port"]: r.get("from") for r in admin["spec"]["ingress"]}
    assert rules[ports["http"]] is None
    assert rules[ports["admin"]] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    policy_volume, policy_key = source(config.policy.path)
    configmap = find(resources, "ConfigMap", policy_volume["configMap"]["name"])
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(configmap["data"][policy_key])
    load_policy(read_yaml(policy_file))
    # Kubernetes never updates a subPath mount: the policy must be mounted as a directory.
    for mount in container["volumeMounts"]:
        if "configMap" in volumes[mount["name"]] or "secret" in volumes[mount["name"]]:
            assert "subPath" not in mount, f"{mount['name']} is mounted with subPath and would never update"

    # The ledger is PostgreSQL, shared by every replica: /v1/usage answers the same from any pod
    # the Service picks. Nothing of it is kept in the pod.
    assert config.ledger.url_env and config.ledger.url is None
    assert "/var/lib/nudge" not in mounts, "no per-pod ledger volume is needed any more"


def test_gateway_gets_the_ledger_url_from_a_secret_and_reaches_postgres(resources, tmp_path, monkeypatch):
    _, pod, container = gateway_pod(resources)
    secret = find(resources, "Secret", "nudge-gateway-config")
    (tmp_path / "g.yaml").write_text(secret["stringData"]["gateway.yaml"])
    config = load_config(tmp_path / "g.yaml")
    env = env_of(container)
    ledger_env = env[config.ledger.url_env]
    assert "value" not in ledger_env, "the ledger URL comes from a Secret, never from the manifest"
    url_value = secret_value(resources, ledger_env)
    monkeypatch.setenv(config.ledger.url_env, url_value)
    url = urlparse(config.ledger.database_url())  # the gateway's own reading of it: PostgreSQL
    assert url.scheme in ("postgresql", "postgres")

    # The URL names the in-cluster PostgreSQL: its Service, port, user and database.
    service = find(resources, "Service", url.hostname)
    postgres = find(resources, "StatefulSet", "nudge-postgres")
    labels = postgres["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], labels)
    assert (url.port or 5432) in {p["port"] for p in service["spec"]["ports"]}
    (db,) = postgres["spec"]["template"]["spec"]["containers"]
    db_env = env_of(db)
    assert url.username == db_env["POSTGRES_USER"]["value"]
    assert url.path.lstrip("/") == db_env["POSTGRES_DB"]["value"]
    # One password: the database is created with the key the gateway logs in with.
    password = env["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert db_env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {k: v for k, v in password.items()
                                                                         if k != "optional"}  # fmt: skip
    assert secret_value(resources, env["PGPASSWORD"]) and url.password is None
    assert ledger_env["valueFrom"]["secretKeyRef"]["name"] == password["name"]


def test_postgres_statefulset_is_probed_persistent_and_limited(resources):
    postgres = find(resources, "StatefulSet", "nudge-postgres")
    spec, pod = postgres["spec"], postgres["spec"]["template"]
    assert selects(spec["selector"], pod["metadata"]["labels"])
    service = find(resources, "Service", spec["serviceName"])
    assert service["spec"].get("clusterIP") == "None", "a StatefulSet's serviceName is a headless Service"
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?(-alpine)?", container["image"]), "an official image, major pinned"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"postgres": 5432}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "pg_isready" and command[command.index("-h") + 1] == "127.0.0.1", probe
    assert "livenessProbe" in container
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
    # The data lies on the StatefulSet's PersistentVolumeClaim, PGDATA in a subdirectory of it.
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    pgdata = env_of(container)["PGDATA"]["value"]
    assert pgdata.startswith(mounts[claim["metadata"]["name"]].rstrip("/") + "/"), pgdata
    # A read-only root filesystem: the socket directory and /tmp are volumes.
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert set(mounts) <= volumes | {claim["metadata"]["name"]}
    assert {"/var/run/postgresql", "/tmp"} <= set(mounts.values())
    # The alpine image's postgres user, as the pod asks for it.
    assert pod["spec"]["securityContext"]["runAsUser"] == (70 if container["image"].endswith("-alpine") else 999)


def test_only_the_gateway_and_the_prune_job_reach_postgres(resources):
    policy = find(resources, "NetworkPolicy", "nudge-postgres")
    postgres = find(resources, "StatefulSet", "nudge-postgres")
    assert selects(policy["spec"]["podSelector"], postgres["spec"]["template"]["metadata"]["labels"])
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 5432, "protocol": "TCP"}]
    _, gateway, _ = gateway_pod(resources)
    prune = pod_specs(resources)["CronJob/nudge-ledger-prune"]
    sources = rule["from"]
    assert all(set(s) == {"podSelector"} for s in sources), "pods of this namespace only"
    allowed = lambda labels: any(selects(s["podSelector"], labels) for s in sources)  # noqa: E731
    assert allowed(gateway["metadata"]["labels"]) and allowed(prune["metadata"]["labels"])
    # Nothing else in the namespace: not Redis, not Postgres itself.
    for name, pod in pod_specs(resources).items():
        if name not in ("Deployment/nudge-gateway", "CronJob/nudge-ledger-prune"):
            assert not allowed(pod["metadata"]["labels"]), name


def test_prune_cronjob_runs_ledger_prune_like_the_gateway(resources):
    cronjob = find(resources, "CronJob", "nudge-ledger-prune")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    minute, hour, dom, month, dow = cronjob["spec"]["schedule"].split()
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit(), "once a day"
    pod = pod_specs(resources)["CronJob/nudge-ledger-prune"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["ledger", "prune"], args
    assert re.fullmatch(r"\d+d", args[args.index("--older-than") + 1]), args
    assert pod["spec"]["restartPolicy"] in ("Never", "OnFailure")
    assert "--host" not in args and "serve" not in args

    # The same image, config Secret and ledger env as the gateway.
    _, gateway, gateway_container = gateway_pod(resources)
    assert container["image"] == gateway_container["image"]
    mount, key = config_mount(container)
    g_mount, g_key = config_mount(gateway_container)
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    g_volumes = {v["name"]: v for v in gateway["spec"]["volumes"]}
    assert volumes[mount["name"]]["secret"]["secretName"] == g_volumes[g_mount["name"]]["secret"]["secretName"]
    assert key == g_key
    env, g_env = env_of(container), env_of(gateway_container)
    for name in ("NUDGE_LEDGER_URL", "PGPASSWORD"):
        assert env[name] == g_env[name], name
    # And the pod is locked down like the gateway's.
    assert pod["spec"]["securityContext"] == gateway["spec"]["securityContext"]
    assert container["securityContext"] == gateway_container["securityContext"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_prune_cronjob_arguments_parse_with_the_gateway_cli(resources):
    (container,) = pod_specs(resources)["CronJob/nudge-ledger-prune"]["spec"]["containers"]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if "ledger" not in commands:
        pytest.skip("nudge-gateway has no `ledger` command yet (it comes with the PostgreSQL ledger)")
    args = parser.parse_args(container["args"])  # exits (SystemExit) on an unknown command or flag
    assert (args.command, args.ledger_command) == ("ledger", "prune")


def test_gateway_config_uses_the_cluster_redis_and_dcgm_exporter(resources, tmp_path):
    _, pod, container = gateway_pod(resources)
    secret = find(resources, "Secret", "nudge-gateway-config")
    (tmp_path / "g.yaml").write_text(secret["stringData"]["gateway.yaml"])
    config = load_config(tmp_path / "g.yaml")

    assert config.budgets.store == "redis"
    redis_url = urlparse(config.budgets.redis_url)
    service = find(resources, "Service", redis_url.hostname)
    assert redis_url.port in {p["port"] for p in service["spec"]["ports"]}
    redis = find(resources, "Deployment", "nudge-redis")
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])

    assert config.keys.required and config.keys.keys
    for backend in config.backends:
        meter = backend.meter
        assert meter.type == "dcgm", backend.name
        url = urlparse(meter.url)
        assert re.match(r"^[a-z0-9-]+\.[a-z0-9-]+\.svc(\.cluster\.local)?$", url.hostname), meter.url
        assert url.port == 9400 and url.path == "/metrics"
        assert meter.select.get("pod"), f"{backend.name}: the dcgm meter must pick its GPUs by pod label"
        assert ".svc" in urlparse(backend.url).hostname


def test_service_pdb_hpa_and_servicemonitor_select_the_gateway(resources):
    deployment, pod, container = gateway_pod(resources)
    labels = pod["metadata"]["labels"]
    service = find(resources, "Service", "nudge-gateway")
    assert selects(service["spec"]["selector"], labels)
    port_names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    pdb = find(resources, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels)
    assert pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"], "the PDB would block every drain"

    hpa = find(resources, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "nudge-gateway")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])  # needs cpu requests, set above

    monitor = find(resources, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
    admin = next(p for p in service["spec"]["ports"] if p["name"] == "admin")
    assert admin["targetPort"] == "admin"


def test_only_the_gateway_reaches_redis_and_every_pod_is_restricted(resources):
    policy = find(resources, "NetworkPolicy", "nudge-redis")
    redis = find(resources, "Deployment", "nudge-redis")
    _, pod, _ = gateway_pod(resources)
    assert selects(policy["spec"]["podSelector"], redis["spec"]["template"]["metadata"]["labels"])
    assert selects(policy["spec"]["ingress"][0]["from"][0]["podSelector"], pod["metadata"]["labels"])
    namespace = find(resources, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # What the "restricted" Pod Security Standard demands of every container.
    pods = pod_specs(resources)
    assert {"Deployment/nudge-gateway", "StatefulSet/nudge-postgres", "CronJob/nudge-ledger-prune"} <= set(pods)
    for name, template in pods.items():
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), name
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])
