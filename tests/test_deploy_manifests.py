"""Deployment files: Kubernetes manifests validated against the bundled Kubernetes OpenAPI schemas
(kubernetes-validate, offline), plus structural checks that tie manifests, compose file, alert
rules and dashboard to the code (queue names, metric names, ports, signals)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from contract import metric_names

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.33"
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "PrometheusRule"}


def _docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _by(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in _docs() if d["kind"] == kind}


def test_every_yaml_and_json_file_parses():
    files = [*DEPLOY.rglob("*.y*ml"), *(ROOT / "docker").rglob("*.y*ml"), ROOT / "docker-compose.yml"]
    assert len(files) >= 10
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path
    json.loads((DEPLOY / "grafana" / "turbovid-dashboard.json").read_text())


def test_core_manifests_match_the_kubernetes_schema():
    checked = 0
    for doc in _docs():
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
    assert checked >= 10


def test_schema_validation_catches_a_broken_manifest():
    worker = next(iter(_by("Deployment").values()))
    broken = json.loads(json.dumps(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] = "lots"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _env(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def test_worker_deployment_gpu_scheduling_and_graceful_termination():
    workers = [d for d in _by("Deployment").values() if d["metadata"]["labels"].get("app.kubernetes.io/name")
               == "turbovid-worker"]
    assert workers
    for dep in workers:
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        gpus = _worker_gpus(c["args"])
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        assert c["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
        assert "nvidia.com/gpu.product" in pod["nodeSelector"]
        assert pod["terminationGracePeriodSeconds"] >= 60
        assert "preStop" in c["lifecycle"]
        assert _env(c)["TURBOVID_WORKER__MODEL"] == dep["metadata"]["labels"]["turbovid.io/model"]
        assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9101"
        # the startup probe passes only once the model is loaded and warm (worker/metrics.py /ready)
        assert c["startupProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def _worker_gpus(args: list[str]) -> int:
    """The ranks of a `turbovid worker [--gpus N]` container (only these two forms are deployed)."""
    assert args == ["worker"] or (args[:2] == ["worker", "--gpus"] and len(args) == 3), args
    return int(args[2]) if len(args) == 3 else 1


def test_multi_gpu_workers_split_their_model_and_have_what_nccl_needs():
    from contract.catalog import get_card
    from models.config import WanConfig

    multi = [d for d in _by("Deployment").values() if d["metadata"]["labels"].get("app.kubernetes.io/name")
             == "turbovid-worker" and _worker_gpus(d["spec"]["template"]["spec"]["containers"][0]["args"]) > 1]
    assert multi
    models = json.loads(_by("ConfigMap")["turbovid-config"]["data"]["TURBOVID_GATEWAY__MODELS"])
    for dep in multi:
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        gpus, model = _worker_gpus(c["args"]), _env(c)["TURBOVID_WORKER__MODEL"]
        assert WanConfig.from_name(get_card(model).architecture).num_heads % gpus == 0, (model, gpus)
        assert model in models  # the gateway accepts the jobs this worker serves
        assert _env(c)["NCCL_NVLS_ENABLE"] == "0"
        shm = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (vol,) = [v for v in pod["volumes"] if v["name"] in shm]
        assert vol["emptyDir"]["medium"] == "Memory"  # NCCL's shared memory, not the 64 MiB default
        assert "TURBOVID_WORKER__GPUS" not in _env(c) and "TURBOVID_WORKER__DEVICE" not in _env(c)


def test_gateway_deployment_service_and_hpa_fit_together():
    dep = _by("Deployment")["turbovid-gateway"]
    svc = _by("Service")["turbovid-gateway"]
    hpa = _by("HorizontalPodAutoscaler")["turbovid-gateway"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert svc["spec"]["ports"][0]["targetPort"] in [p["name"] for p in c["ports"]]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "preStop" in c["lifecycle"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "turbovid-gateway"
    assert hpa["spec"]["minReplicas"] >= 2


def test_keda_scales_each_worker_on_its_models_rq_queue():
    deployments = _by("Deployment")
    scaled = _by("ScaledObject")
    assert scaled
    for so in scaled.values():
        target = deployments[so["spec"]["scaleTargetRef"]["name"]]
        model = _env(target["spec"]["template"]["spec"]["containers"][0])["TURBOVID_WORKER__MODEL"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == f"rq:queue:{model}"  # RQ's list for the model queue
        assert trigger["authenticationRef"]["name"] in _by("TriggerAuthentication")


def test_referenced_configmaps_and_secrets_exist():
    names = set(_by("ConfigMap")) | set(_by("Secret"))
    for dep in _by("Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            for ref in c.get("envFrom", []):
                assert (ref.get("configMapRef") or ref.get("secretRef"))["name"] in names
    for auth in _by("TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] in names


def _metric_refs(text: str) -> set[str]:
    found = set(re.findall(r"turbovid_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in found}


def test_alerts_and_dashboard_use_only_defined_metrics():
    defined = {m.name for m in metric_names.ALL}
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = (DEPLOY / "grafana" / "turbovid-dashboard.json").read_text()
    for text in (alerts, dashboard):
        refs = _metric_refs(text)
        assert refs and refs <= defined, refs - defined
    assert defined - {"turbovid_http_requests_total"} <= _metric_refs(dashboard) | {
        m for m in defined if m.startswith("turbovid_http")}


def test_prometheus_rule_is_the_plain_rule_file():
    rule = _by("PrometheusRule")["turbovid"]
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(exprs) >= 5


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = {ROOT / "deploy" / r for r in kust["resources"]}
    assert listed == set((DEPLOY / "k8s").glob("*.yaml"))
    for gen in kust["configMapGenerator"]:
        for f in gen["files"]:
            assert (DEPLOY / f).is_file()


def test_compose_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    s = compose["services"]
    assert {"redis", "minio", "minio-init", "gateway", "webhooks", "worker", "prometheus", "grafana"} <= set(s)
    assert "--appendonly" in s["redis"]["command"] and "yes" in s["redis"]["command"]
    assert "mc mb" in " ".join(s["minio-init"]["command"])
    gpu = s["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert s["worker"]["stop_grace_period"]
    for svc in s.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and "checkpoints" not in src:
                assert (ROOT / src).exists(), src
    assert s["gateway"]["build"]["dockerfile"] == "docker/gateway.Dockerfile"


def test_dockerfiles_keep_torch_out_of_the_gateway():
    gateway = (ROOT / "docker" / "gateway.Dockerfile").read_text()
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    installs = [ln for ln in gateway.splitlines() if "pip install" in ln]
    assert installs and all("torch" not in ln and "worker" not in ln for ln in installs)
    assert '".[service]"' in gateway and "{'torch', 'models', 'kernels', 'worker'} & set(sys.modules)" in gateway
    assert worker.startswith("#") and "FROM nvidia/cuda:" in worker and '".[worker]"' in worker
    assert "STOPSIGNAL SIGTERM" in worker


def _redis_url_sources(container: dict) -> tuple[str, set[str]]:
    """The container's TURBOVID_REDIS__URL value and the secrets its $(VAR) references come from."""
    env = {e["name"]: e for e in container.get("env", [])}
    url = env["TURBOVID_REDIS__URL"]["value"]
    secrets = set()
    for var in re.findall(r"\$\(([A-Z_]+)\)", url):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        secrets.add(f"{ref['name']}/{ref['key']}")
    return url, secrets


def test_keda_and_every_pod_read_redis_from_one_secret():
    (auth,) = _by("TriggerAuthentication").values()
    keda = {f"{r['name']}/{r['key']}" for r in auth["spec"]["secretTargetRef"]}
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"address", "password"}
    for so in _by("ScaledObject").values():
        assert "address" not in so["spec"]["triggers"][0]["metadata"]  # from the secret, not restated
    assert "TURBOVID_REDIS__URL" not in _by("ConfigMap")["turbovid-config"]["data"]
    secret = _by("Secret")["turbovid-redis"]["stringData"]
    pods = 0
    for dep in _by("Deployment").values():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        url, sources = _redis_url_sources(c)
        assert url.startswith("redis://:$(") and sources == keda, (dep["metadata"]["name"], sources)
        pods += 1
    assert pods >= 3 and {"address", "password"} <= set(secret)


def test_global_gauges_are_aggregated_with_max_not_sum():
    # every gateway replica exports the same Redis-wide value: sum would multiply it by the replicas
    texts = [(DEPLOY / "prometheus" / "alerts.yml").read_text(), (DEPLOY / "grafana" / "turbovid-dashboard.json")
             .read_text(), (DEPLOY / "k8s" / "prometheus-rule.yaml").read_text()]
    gauges = ("turbovid_queue_depth", "turbovid_workers", "turbovid_model_available")
    for text in texts:
        for gauge in gauges:
            assert not re.search(rf"sum\s*(by\s*\([^)]*\)\s*)?\(\s*{gauge}\b", text), gauge
    alerts = yaml.safe_load(texts[0])
    exprs = {r["alert"]: r["expr"] for g in alerts["groups"] for r in g["rules"]}
    assert "max by (model) (turbovid_model_available) == 0" in exprs["TurboVidModelUnavailable"]


def test_gateway_readiness_does_not_wait_for_workers_and_deploy_files_name_current_modules():
    (c,) = _by("Deployment")["turbovid-gateway"]["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # Redis only (service/health_router.py)
    for path in [*DEPLOY.rglob("*"), *(ROOT / "docker").rglob("*"), ROOT / "docker-compose.yml"]:
        if path.is_file():
            text = path.read_text(errors="replace")
            for stale in ("service/metric_names.py", "service/settings.py"):
                assert stale not in text, (path, stale)
            for module in re.findall(r"\b((?:contract|service|worker|cli)/[a-z_]+\.py)\b", text):
                assert (ROOT / module).is_file(), (path, module)


def test_operations_guide_covers_every_alert_probe_and_worker_port():
    guide = (ROOT / "docs" / "operations.md").read_text()
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for g in alerts["groups"] for r in g["rules"]):
        assert f"`{rule['alert']}`" in guide, rule["alert"]
    for probe in ("/healthz", "/readyz", "/healthz/models", "/ready", "--gpu N", "Draining a node"):
        assert probe in guide, probe
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "HEALTHCHECK" in worker and "/ready" in worker
