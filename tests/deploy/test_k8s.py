"""deploy/k8s: schema-valid (bundled Kubernetes schemas, offline), hardened and probed workloads, selectors
and references that resolve, a kustomization listing every file, and real commands with accepted settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy._support import DEPLOY, check_env_names, check_flags, resolve_command, validate_env

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30.0"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
SERVING_KINDS = ("Deployment", "StatefulSet")  # long-running workloads, probed and selected by Services


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in load(path)]


def of_kind(resources: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [doc for doc in resources if doc["kind"] in kinds]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def test_kustomization_lists_every_manifest(kustomization: dict[str, Any]) -> None:
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(set(listed)), "a resource is listed twice"
    assert set(listed) == files, f"missing: {sorted(files - set(listed))}, unknown: {sorted(set(listed) - files)}"
    assert kustomization["namespace"] == "trackdelivery"


def test_manifests_match_the_kubernetes_schemas(resources: list[dict[str, Any]]) -> None:
    for doc in resources:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


def test_images_are_the_kustomized_trackdelivery_image(
    resources: list[dict[str, Any]], kustomization: dict[str, Any]
) -> None:
    names = {image["name"] for image in kustomization["images"]}
    for workload in of_kind(resources, *WORKLOAD_KINDS):
        for container in pod_spec(workload)["containers"]:
            assert container["image"].split(":")[0] in names, container["image"]
            assert not container["image"].endswith(":latest")


def test_workloads_are_hardened_and_sized(resources: list[dict[str, Any]]) -> None:
    for workload in of_kind(resources, *WORKLOAD_KINDS):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] != 0, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name}: {bound}"


def test_deployments_have_probes_on_declared_ports(resources: list[dict[str, Any]]) -> None:
    for deployment in of_kind(resources, *SERVING_KINDS):
        for container in pod_spec(deployment)["containers"]:
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                assert probe in container, f"{deployment['metadata']['name']}: no {probe}"
                port = container[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{probe} probes undeclared port {port}"


def test_query_service_probes(resources: list[dict[str, Any]]) -> None:
    (query,) = [d for d in of_kind(resources, *SERVING_KINDS) if d["metadata"]["name"] == "trackdelivery-query"]
    container = pod_spec(query)["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_selectors_match_labels(resources: list[dict[str, Any]]) -> None:
    deployments = of_kind(resources, *SERVING_KINDS)
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), deployment["metadata"]["name"]
    for service in of_kind(resources, "Service"):
        selector = service["spec"]["selector"]
        matched = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} Deployments"
        ports = {port["name"] for c in pod_spec(matched[0])["containers"] for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"targetPort {port['targetPort']} not a container port"


def _data(resource: dict[str, Any]) -> dict[str, str]:
    return {**resource.get("data", {}), **resource.get("stringData", {})}


def test_config_map_and_secret_references_resolve(resources: list[dict[str, Any]]) -> None:
    maps = {doc["metadata"]["name"]: _data(doc) for doc in of_kind(resources, "ConfigMap")}
    secrets = {doc["metadata"]["name"]: _data(doc) for doc in of_kind(resources, "Secret")}
    for workload in of_kind(resources, *WORKLOAD_KINDS):
        spec = pod_spec(workload)
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in maps
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {})
                for kind, known in (("configMapKeyRef", maps), ("secretKeyRef", secrets)):
                    if kind in reference:
                        ref = reference[kind]
                        assert ref["name"] in known and ref["key"] in known[ref["name"]], f"{variable['name']}: {ref}"
            mounts = {mount["name"] for mount in container.get("volumeMounts", [])}
            claims = {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
            assert mounts <= {volume["name"] for volume in spec.get("volumes", [])} | claims
        for volume in spec.get("volumes", []):
            if "secret" in volume and not volume["secret"].get("optional"):
                assert volume["secret"]["secretName"] in secrets
            if "configMap" in volume and not volume["configMap"].get("optional"):
                assert volume["configMap"]["name"] in maps


def container_env(container: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    """The variables a container gets (ConfigMap/Secret values resolved)."""
    by_name = {(doc["kind"], doc["metadata"]["name"]): _data(doc) for doc in of_kind(resources, "ConfigMap", "Secret")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name[("ConfigMap", source["configMapRef"]["name"])])
        if "secretRef" in source:
            env.update(by_name[("Secret", source["secretRef"]["name"])])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        else:
            reference = variable["valueFrom"]
            kind, ref = ("ConfigMap", reference["configMapKeyRef"]) if "configMapKeyRef" in reference else (
                "Secret", reference["secretKeyRef"])
            env[variable["name"]] = by_name[(kind, ref["name"])][ref["key"]]
    return env


def test_containers_run_real_subcommands_with_accepted_settings(
    resources: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    commands = set()
    for workload in of_kind(resources, *WORKLOAD_KINDS):
        for container in pod_spec(workload)["containers"]:
            path, command, rest = resolve_command(container["args"])
            check_flags(path, command, rest)
            env = container_env(container, resources)
            check_env_names(path[0], env, f"{workload['metadata']['name']}/{container['name']}")
            validate_env(path[0], env, monkeypatch)
            commands.add(" ".join(path))
    assert {"topics create", "process", "serve", "alerts"} <= commands


def test_processor_replicas_do_not_exceed_the_partitions(resources: list[dict[str, Any]]) -> None:
    (config,) = of_kind(resources, "ConfigMap")
    partitions = int(config["data"]["KAFKA_PARTITIONS"])
    serving = of_kind(resources, *SERVING_KINDS)
    (processor,) = [d for d in serving if pod_spec(d)["containers"][0]["args"] == ["process"]]
    assert 1 <= processor["spec"]["replicas"] <= partitions


def test_metrics_endpoints_are_reachable_by_probes(resources: list[dict[str, Any]]) -> None:
    """Processor and alert worker bind their metrics to 127.0.0.1 by default; kubelet probes the pod IP."""
    for deployment in of_kind(resources, *SERVING_KINDS):
        container = pod_spec(deployment)["containers"][0]
        env = container_env(container, resources)
        if any(port["name"] == "metrics" for port in container.get("ports", [])):
            hosts = [value for key, value in env.items() if key.endswith("_METRICS_HOST")]
            assert hosts == ["0.0.0.0"], deployment["metadata"]["name"]


def test_the_processor_keeps_its_state_table_on_a_volume_of_its_own(resources: list[dict[str, Any]]) -> None:
    """rocksdb:// on a per-pod claim: a restarted pod reads only the changelog written since it stopped."""
    (processor,) = [w for w in of_kind(resources, "StatefulSet") if pod_spec(w)["containers"][0]["args"] == ["process"]]
    container = pod_spec(processor)["containers"][0]
    env = {variable["name"]: variable.get("value") for variable in container["env"]}
    assert env["TRACKDELIVERY_PROCESSOR_STORE"] == "rocksdb://"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["TRACKDELIVERY_PROCESSOR_DATADIR"]]
    assert mount["name"] in {claim["metadata"]["name"] for claim in processor["spec"]["volumeClaimTemplates"]}
    headless = [s for s in of_kind(resources, "Service") if s["metadata"]["name"] == processor["spec"]["serviceName"]]
    assert len(headless) == 1 and headless[0]["spec"]["clusterIP"] == "None"
