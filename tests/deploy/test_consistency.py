"""The manifests agree with each other and with the server: labels and selectors, ports, probes, the
command line (parsed by medvllm's own parser), mounts, security settings and resources."""

from __future__ import annotations

import pytest

from medvllm.cli.main import build_parser
from tests.deploy.manifests import containers, one, rendered

OVERLAYS = ("overlays/cpu", "overlays/gpu")


def pod(objects):
    return one(objects, "Deployment")["spec"]["template"]


def container(objects):
    (c,) = containers(objects)
    return c


def serve_args(objects):
    c = container(objects)
    args, unknown = build_parser().parse_known_args(c["command"][1:] + c["args"])
    assert not unknown, f"flags medvllm serve does not know: {unknown}"
    assert args.open_metrics, "the endpoint picker scrapes /metrics without a key"
    return args


def port_number(c, port):
    return port if isinstance(port, int) else {p["name"]: p["containerPort"] for p in c["ports"]}[port]


@pytest.fixture(params=OVERLAYS)
def objects(request):
    return rendered(request.param)


def test_selectors_pick_the_server_pods(objects):
    labels = pod(objects)["metadata"]["labels"]
    deployment = one(objects, "Deployment")
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        one(objects, "Service")["spec"]["selector"],
        one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(rendered("inference-pool"), "InferencePool")["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= labels.items()
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_ports_agree(objects):
    c = container(objects)
    args = serve_args(objects)
    assert args.host == "0.0.0.0" and [p["containerPort"] for p in c["ports"]] == [args.port]
    (service_port,) = one(objects, "Service")["spec"]["ports"]
    assert port_number(c, service_port["targetPort"]) == args.port
    pool = one(rendered("inference-pool"), "InferencePool")
    assert pool["spec"]["targetPorts"] == [{"number": args.port}]


def test_probes_hit_health_and_startup_covers_a_model_load(objects):
    c = container(objects)
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = c[name]["httpGet"]
        assert get["path"] == "/health" and port_number(c, get["port"]) == serve_args(objects).port
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_grace_period_outlasts_the_drain(objects):
    spec = pod(objects)["spec"]
    pre_stop = container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + serve_args(objects).shutdown_timeout


def test_command_line_names_a_mounted_model_and_a_known_profile(objects):
    from medvllm.deployment.profiles import find

    c = container(objects)
    args = serve_args(objects)
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"].get("readOnly") and args.model.startswith("/models/")
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["MEDVLLM_PROFILES_DIR"] in mounts
    # a shipped profile, or one from the ConfigMap (found through MEDVLLM_PROFILES_DIR in the pod)
    custom = set(one(objects, "ConfigMap")["data"])
    assert f"{args.deployment_profile}.json" in custom or find(args.deployment_profile, {})[1] == "shipped"


def test_keys_file_and_audit_log_point_into_their_volumes(objects):
    c = container(objects)
    values = dict(zip(c["args"], c["args"][1:]))
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    keys_mount = mounts["/etc/medvllm"]
    assert values["--api-keys-file"] == "/etc/medvllm/keys.json" and keys_mount.get("readOnly")
    volumes = {v["name"]: v for v in pod(objects)["spec"]["volumes"]}
    secret = volumes[keys_mount["name"]]["secret"]
    assert secret["secretName"] == "medvllm-api-keys" and secret["items"] == [{"key": "keys.json", "path": "keys.json"}]
    assert values["--audit-log"].startswith("/var/log/medvllm/") and not mounts["/var/log/medvllm"].get("readOnly")
    # a subPath mount would freeze the file: a rotated key must reach the running server
    assert not any("subPath" in m for m in c["volumeMounts"])


def test_locked_down(objects):
    spec = pod(objects)["spec"]
    c = container(objects)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    # every writable path is a volume of its own, so the read-only root holds
    env = {e["name"]: e["value"] for e in c["env"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", "/cache"} <= writable and env["MEDVLLM_CACHE_DIR"].startswith("/cache/")


def test_resources():
    cpu = container(rendered("overlays/cpu"))["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= cpu[part].keys()
    gpu = container(rendered("overlays/gpu"))["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == "1"
    assert "memory" in gpu["limits"]
