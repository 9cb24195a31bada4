"""deploy/ and the backup scripts: the files a region's IT contractor runs, checked against the code they run.

The manifests, units and configuration examples must name only settings that exist, probe the health endpoints
the services serve, and agree with each other (ports, timeouts, body sizes). The nginx and Redis configurations are
loaded by the real programs when they are installed. A backup made by scripts/backup.sh is restored by
scripts/restore.sh after the databases, keys and blobs are gone, and the deployment then serves what it served
before; a tampered backup is refused before anything is touched.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from inspect import signature
from pathlib import Path
from typing import Any

import pytest
import typer
from sqlalchemy import create_engine, inspect, text

from services.cli import app as cli_app
from services.kit.db import make_engine
from services.kit.migrate import upgrade
from services.kit.settings import Settings
from services.share.fhir.binary import MAX_JSON_BYTES
from tests.conftest import require
from tests.fhir_helpers import create, created_id, patient
from tests.infra import IN_CI, LiveServer, PostgresDatabases, free_port, make_network, settings_for_tests
from tests.planted import FAMILY

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
NGINX_CONF = DEPLOY / "nginx" / "renkei.conf"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"
BACKUP = ROOT / "scripts" / "backup.sh"
RESTORE = ROOT / "scripts" / "restore.sh"

RENKEI_NAME = re.compile(r"\bRENKEI_[A-Z0-9_]*[A-Z0-9]\b")
# Names that look like settings and are not: scripts/setup.sh's choice of virtual environment.
NOT_SETTINGS = {"RENKEI_VENV"}
SETTINGS_FIELDS = frozenset(Settings.model_fields)
IMAGE = "registry.example.jp/renkei:0.1.0"
# A client silent this long is dropped by the server itself (two heartbeats): proxies must wait longer.
WS_SILENCE_SECONDS = 2 * Settings.model_fields["ws_heartbeat_seconds"].default


def unknown_settings(names: set[str]) -> set[str]:
    """The RENKEI_* names among ``names`` that no Settings field reads (RENKEI_FOO is field foo)."""
    return {name for name in names - NOT_SETTINGS if name.removeprefix("RENKEI_").lower() not in SETTINGS_FIELDS}


# Kubernetes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    yaml: Any = pytest.importorskip("yaml", reason="PyYAML is needed to read deploy/kubernetes")
    documents: list[dict[str, Any]] = []
    files = sorted(K8S.glob("*.yaml"))
    assert files, "deploy/kubernetes holds no manifests"
    for path in files:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document is None:
                continue
            assert isinstance(document, dict), f"{path.name}: a document that is not a mapping"
            assert document.get("apiVersion") and document.get("kind"), f"{path.name}: no apiVersion or kind"
            documents.append({**document, "_file": path.name})
    return documents


def of_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(manifests: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{m['kind']} {m['metadata']['name']}", m["spec"]["template"]["spec"])
            for m in manifests if m["kind"] in ("Deployment", "Job")]


def test_manifests_match_the_kubernetes_schemas(manifests: list[dict[str, Any]]) -> None:
    """Field names and types as the API server checks them (strict: unknown fields refused), offline."""
    validator: Any = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")
    for manifest in manifests:
        if manifest["kind"] == "Kustomization":
            continue
        document = {k: v for k, v in manifest.items() if k != "_file"}
        validator.validate(document, "1.30.0", strict=True)


def test_every_object_lives_in_the_renkei_namespace(manifests: list[dict[str, Any]]) -> None:
    for manifest in manifests:
        if manifest["kind"] in ("Namespace", "Kustomization"):
            continue
        assert manifest["metadata"].get("namespace") == "renkei", f"{manifest['_file']}: {manifest['kind']}"
    assert named(manifests, "Namespace", "renkei")


def test_kustomization_applies_every_manifest_but_the_secret_template_and_the_job(
        manifests: list[dict[str, Any]]) -> None:
    (kustomization,) = of_kind(manifests, "Kustomization")
    listed = set(kustomization["resources"])
    by_hand = {"secret.example.yaml", "migrate-job.yaml", "kustomization.yaml"}
    assert listed == {p.name for p in K8S.glob("*.yaml")} - by_hand


def test_deployments_probe_readiness_and_liveness(manifests: list[dict[str, Any]]) -> None:
    deployments = of_kind(manifests, "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"renkei-auth", "renkei-share"}
    for deployment in deployments:
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", deployment["metadata"]["name"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", deployment["metadata"]["name"]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert container["readinessProbe"]["httpGet"]["port"] in ports
            assert f"--port {ports['http']}" in shlex.join(container["command"])


def test_share_runs_at_least_two_pods_and_scales_on_cpu(manifests: list[dict[str, Any]]) -> None:
    share = named(manifests, "Deployment", "renkei-share")
    assert share["spec"]["replicas"] >= 2
    hpa = named(manifests, "HorizontalPodAutoscaler", "renkei-share")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "renkei-share"}
    assert hpa["spec"]["minReplicas"] >= 2
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70
    pdb = named(manifests, "PodDisruptionBudget", "renkei-share")
    labels = share["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] >= 1


def test_renkei_names_in_manifests_are_settings(manifests: list[dict[str, Any]]) -> None:
    names: set[str] = set()
    for manifest in of_kind(manifests, "ConfigMap"):
        names |= set(manifest["data"])
    secret: set[str] = set()
    for manifest in of_kind(manifests, "Secret"):
        secret |= set(manifest.get("stringData", {})) | set(manifest.get("data", {}))
    for _, spec in pod_specs(manifests):
        for container in spec["containers"]:
            names |= {variable["name"] for variable in container.get("env", [])}
    renkei = {name for name in names | secret if name.startswith("RENKEI_")}
    assert unknown_settings(renkei) == set()
    # Every key-material setting (repr=False) comes from the Secret, so that no pod makes a key file of its own
    # (each pod its own key, gone with the pod).
    keys = {f"RENKEI_{name.upper()}" for name, field in Settings.model_fields.items() if field.repr is False}
    assert keys <= secret, f"the Secret lacks {sorted(keys - secret)}"


def test_secrets_stay_out_of_the_config_map(manifests: list[dict[str, Any]]) -> None:
    config = named(manifests, "ConfigMap", "renkei-config")["data"]
    secret_fields = {name for name, field in Settings.model_fields.items() if field.repr is False}
    assert secret_fields, "Settings marks its key material repr=False"
    secret_fields |= {"auth_database_url", "share_database_url", "redis_url"}  # they carry passwords
    assert {f"RENKEI_{field.upper()}" for field in secret_fields}.isdisjoint(config)


def test_ingress_routes_auth_and_keeps_websockets_open(manifests: list[dict[str, Any]]) -> None:
    ingress = named(manifests, "Ingress", "renkei")
    annotations = ingress["metadata"]["annotations"]
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) > WS_SILENCE_SECONDS
    assert size_in_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) >= MAX_JSON_BYTES
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"]
    (rule,) = ingress["spec"]["rules"]
    routes = {path["path"]: path["backend"]["service"]["name"] for path in rule["http"]["paths"]}
    assert routes == {"/auth": "renkei-auth", "/": "renkei-share"}
    services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
    for backend in routes.values():
        assert backend in services
        target = services[backend]["spec"]["selector"]
        deployment = named(manifests, "Deployment", backend)
        assert target.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_pods_run_unprivileged_with_limits(manifests: list[dict[str, Any]]) -> None:
    specs = pod_specs(manifests)
    assert {what for what, _ in specs} >= {"Job renkei-migrate", "Deployment renkei-auth", "Deployment renkei-share"}
    for what, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec.get("automountServiceAccountToken") is False, what
        for container in spec["containers"]:
            assert container["image"] == IMAGE, what
            context = container["securityContext"]
            assert context["capabilities"]["drop"] == ["ALL"], what
            assert context["allowPrivilegeEscalation"] is False, what
            assert context["readOnlyRootFilesystem"] is True, what
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), what
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), what
            mounts = {mount["mountPath"] for mount in container.get("volumeMounts", [])}
            assert {"/tmp", "/var/lib/renkei"} <= mounts, f"{what}: a read-only root needs writable /tmp and data"


def test_migration_job_runs_migrate(manifests: list[dict[str, Any]]) -> None:
    job = named(manifests, "Job", "renkei-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["renkei", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_dockerfile_runs_renkei_as_the_manifests_user(manifests: list[dict[str, Any]]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    (user,) = re.findall(r"^USER (\d+)", dockerfile, re.MULTILINE)
    for what, spec in pod_specs(manifests):
        assert str(spec["securityContext"]["runAsUser"]) == user, what
    assert re.search(r'^CMD \["renkei", "serve"', dockerfile, re.MULTILINE)


# systemd and the environment file -------------------------------------------------------------------------


def unit_files() -> list[Path]:
    return sorted(p for p in SYSTEMD.iterdir() if p.suffix in (".service", ".timer", ".target"))


def test_renkei_names_in_deploy_files_are_settings() -> None:
    """Every RENKEI_* name the units, the env example, the runbooks and the scripts mention is a setting."""
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in (".pem", ".key")]
    files += [BACKUP, RESTORE]
    found: dict[str, set[str]] = {}
    for path in files:
        for name in RENKEI_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert "RENKEI_PUBLIC_URL" in found and "RENKEI_AUTH_MASTER_KEY" in found
    assert {name: sorted(found[name]) for name in unknown_settings(set(found))} == {}


def test_env_example_assigns_only_settings() -> None:
    assigned = re.findall(r"^#?\s*(RENKEI_[A-Z0-9_]+)=", (DEPLOY / "renkei.env.example").read_text(), re.MULTILINE)
    assert assigned and unknown_settings(set(assigned)) == set()


def directives(path: Path) -> list[tuple[str, str]]:
    """(key, value) of a unit file, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [(k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in joined.splitlines())
            if _ and not k.lstrip().startswith(("#", ";", "["))]


def serve_options() -> set[str]:
    command = typer.main.get_command(cli_app)
    serve = command.commands["serve"]  # type: ignore[attr-defined]
    return {option for parameter in serve.params for option in parameter.opts}


def test_units_are_hardened_and_read_the_environment_file() -> None:
    services = [p for p in unit_files() if p.suffix == ".service"]
    assert {p.name for p in services} >= {"renkei-migrate.service", "renkei-auth.service", "renkei-share@.service"}
    for path in services:
        values = directives(path)
        keys = dict(values)
        assert keys.get("User") == "renkei", path.name
        assert ("EnvironmentFile", "/etc/renkei/renkei.env") in values, path.name
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes"}.items():
            assert keys.get(key) == value, f"{path.name}: {key}"
        assert "/var/lib/renkei" in keys.get("ReadWritePaths", "").split(), path.name
    migrate = dict(directives(SYSTEMD / "renkei-migrate.service"))
    assert migrate["Type"] == "oneshot" and migrate["ExecStart"].endswith("renkei migrate")
    for name in ("renkei-auth.service", "renkei-share@.service"):
        keys = dict(directives(SYSTEMD / name))
        assert "renkei-migrate.service" in keys["Requires"].split(), name
        assert "renkei-migrate.service" in keys["After"].split(), name


def test_units_serve_with_options_renkei_serve_takes() -> None:
    known = serve_options()
    for name in ("renkei-auth.service", "renkei-share@.service"):
        command = shlex.split(dict(directives(SYSTEMD / name))["ExecStart"])
        assert command[0].endswith("/renkei") and command[1] == "serve", name
        options = {arg.split("=", 1)[0] for arg in command[2:] if arg.startswith("--")}
        assert options <= known, f"{name}: {options - known} are not options of `renkei serve`"


def test_each_unit_and_deployment_serves_its_own_service(manifests: list[dict[str, Any]]) -> None:
    """The identity units and pods serve /auth alone, the share ones the share service alone (`--service`)."""
    from services.cli import Service

    for name, service in (("renkei-auth.service", "auth"), ("renkei-share@.service", "share")):
        command = shlex.split(dict(directives(SYSTEMD / name))["ExecStart"])
        assert command[command.index("--service") + 1] == service, name
    for deployment, service in (("renkei-auth", "auth"), ("renkei-share", "share")):
        (container,) = named(manifests, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[command.index("--service") + 1] == service, deployment
    assert {s.value for s in Service} == {"auth", "share", "both"}


def test_nginx_upstreams_are_the_units_ports() -> None:
    conf = NGINX_CONF.read_text(encoding="utf-8")
    auth = re.search(r"upstream renkei_auth \{(.*?)\}", conf, re.DOTALL)
    share = re.search(r"upstream renkei_share \{(.*?)\}", conf, re.DOTALL)
    assert auth and share
    auth_ports = re.findall(r"server 127\.0\.0\.1:(\d+)", auth.group(1))
    share_ports = re.findall(r"server 127\.0\.0\.1:(\d+)", share.group(1))
    unit = dict(directives(SYSTEMD / "renkei-auth.service"))["ExecStart"]
    assert auth_ports == [re.findall(r"--port (\d+)", unit)[0]]
    assert "--port %i" in dict(directives(SYSTEMD / "renkei-share@.service"))["ExecStart"]
    target = (SYSTEMD / "renkei.target").read_text(encoding="utf-8")
    assert sorted(share_ports) == sorted(re.findall(r"renkei-share@(\d+)\.service", target))
    assert len(share_ports) == 2 and "least_conn;" in share.group(1)


def test_nginx_closes_idle_upstream_connections_before_the_instances_do(tmp_path: Path) -> None:
    """An instance closing an idle connection as nginx reuses it would lose the request on it (a POST: a 502): in
    the shipped file and in the topology scripts/topology.py runs, nginx closes them first."""
    import uvicorn

    instance_idle = signature(uvicorn.Config).parameters["timeout_keep_alive"].default  # renkei serve's
    run = _topology().nginx_config(work=tmp_path, port=1, doors=[2, 3], auth_port=4, share_ports=[5, 6],
                                   cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    for conf, count in ((NGINX_CONF.read_text(encoding="utf-8"), 2), (run, 4)):
        upstreams = re.findall(r"^ *upstream \S+ \{\n(.*?)^ *\}", conf, re.DOTALL | re.MULTILINE)
        assert len(upstreams) == count
        for block in upstreams:
            found = re.search(r"^ +keepalive_timeout (\d+)s;", block, re.MULTILINE)
            assert found and int(found.group(1)) < instance_idle, block


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units' syntax is not checked")
    for path in unit_files():
        # The program is installed on the target host, not here; everything else is checked as written.
        text_ = path.read_text(encoding="utf-8").replace("/opt/renkei/venv/bin/renkei", "/bin/true")
        name = path.name.replace("@.service", "@8101.service")
        (tmp_path / name).write_text(text_, encoding="utf-8")
    for unit in sorted(tmp_path.iterdir()):
        result = subprocess.run([analyze, "verify", "--man=no", "--recursive-errors=no", f"./{unit.name}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
        if "recursive-errors" in result.stderr and "unrecognized" in result.stderr:
            pytest.skip("this systemd-analyze is too old for --recursive-errors")
        assert result.returncode == 0 and result.stderr == "", f"{unit.name}: {result.stderr}"


# nginx ---------------------------------------------------------------------------------------------------


def size_in_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value.strip()).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def test_nginx_terminates_tls_and_forwards_as_the_services_expect() -> None:
    conf = NGINX_CONF.read_text(encoding="utf-8")
    assert re.search(r"^\s*ssl_protocols TLSv1\.2 TLSv1\.3;", conf, re.MULTILINE)
    assert re.search(r'add_header Strict-Transport-Security "max-age=\d+[^"]*" always;', conf)
    assert "return 301 https://$host$request_uri;" in conf
    assert re.search(r"location \^~ /auth/ \{\s*proxy_pass http://renkei_auth;", conf)
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "Upgrade", "Connection"):
        assert re.search(rf"proxy_set_header {header} \$", conf), header
    ws = re.search(r"location = /ws \{(.*?)\}", conf, re.DOTALL)
    assert ws and "proxy_pass http://renkei_share;" in ws.group(1)
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        seconds = re.search(rf"{name} (\d+)s;", ws.group(1))
        assert seconds and int(seconds.group(1)) > WS_SILENCE_SECONDS, name
    # The services' own limits (services/kit/limits.py), so nginx refuses a larger body before it arrives and never
    # a body the services would take.
    defaults = {name: field.default for name, field in Settings.model_fields.items()}  # not the caller's RENKEI_*
    server_level = re.search(r"^    client_max_body_size (\w+);", conf, re.MULTILINE)
    fhir = re.search(r"location \^~ /fhir \{[^}]*client_max_body_size (\w+);", conf)
    binary = re.search(r"location \^~ /fhir/Binary \{[^}]*client_max_body_size (\w+);", conf)
    assert server_level and fhir and binary
    for (limit,), expected in ((server_level.groups(), defaults["max_body_bytes"]),
                               (fhir.groups(), defaults["max_fhir_body_bytes"]), (binary.groups(), MAX_JSON_BYTES)):
        assert expected <= size_in_bytes(limit) < expected + 1024**2, (limit, expected)


def test_nginx_logs_no_query_strings() -> None:
    conf = NGINX_CONF.read_text(encoding="utf-8")
    formats = re.findall(r"log_format\s+\w+\s+(.*?);", conf, re.DOTALL)
    assert formats, "a log format of its own, not nginx's combined (which logs $request)"
    for variables in formats:
        for leaky in ("$request ", "$request\"", "$request_uri", "$args", "$query_string", "$http_referer",
                      "$http_authorization", "$http_cookie", "$request_body"):
            assert leaky not in variables, leaky
        assert "$uri" in variables
    for log in re.findall(r"access_log\s+(\S+)(?:\s+(\w+))?;", conf):
        assert log[0] == "off" or log[1] == "renkei", log


def self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renkei.example.jp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _topology() -> Any:
    """scripts/topology.py, loaded as a module."""
    spec = importlib.util.spec_from_file_location("renkei_topology", ROOT / "scripts" / "topology.py")
    assert spec is not None and spec.loader is not None
    topology = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(topology)
    return topology


def _nginx() -> str | None:
    """nginx's path, found as scripts/topology.py finds it; in CI (CI=true) installed when missing, as that script
    installs it (apt-get, root)."""
    topology = _topology()
    found: str | None = topology.nginx_binary()
    if found or not IN_CI:
        return found
    return str(topology.ensure_nginx())  # raises, failing the test, when it cannot be had


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    """`nginx -t` on the file as shipped, with only the certificate and log paths moved into a temp dir."""
    nginx = _nginx()
    if nginx is None:
        pytest.skip("nginx is not installed (set RENKEI_TEST_NGINX to a binary to check deploy/nginx/renkei.conf; "
                    "with CI=true it is installed)")
    cert, key = self_signed(tmp_path)
    (tmp_path / "logs").mkdir()
    site = (NGINX_CONF.read_text(encoding="utf-8")
            .replace("/etc/ssl/renkei/fullchain.pem", str(cert)).replace("/etc/ssl/renkei/privkey.pem", str(key))
            .replace("/var/log/nginx/renkei/", f"{tmp_path}/logs/"))
    (tmp_path / "site.conf").write_text(site, encoding="utf-8")
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                      "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{\n  {temp}\n  include {tmp_path}/site.conf;\n}}\n", encoding="utf-8")
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


def test_logrotate_reads_its_configuration(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin")
    if logrotate is None:
        pytest.skip("logrotate is not installed: deploy/logrotate/renkei is not parsed")
    conf = (DEPLOY / "logrotate" / "renkei").read_text(encoding="utf-8")
    assert "/var/log/nginx/renkei/access.log {" in conf
    assert re.search(r"access_log /var/log/nginx/renkei/access\.log renkei;", NGINX_CONF.read_text(encoding="utf-8"))
    (tmp_path / "renkei").write_text(conf.replace("/var/log/nginx/renkei/", f"{tmp_path}/"), encoding="utf-8")
    # -d: parse and plan only, rotating nothing.
    result = subprocess.run([logrotate, "-d", "-s", str(tmp_path / "state"), str(tmp_path / "renkei")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "error" not in result.stderr.lower(), result.stderr


# Redis ---------------------------------------------------------------------------------------------------


def test_redis_keeps_nothing_and_asks_for_a_password() -> None:
    conf = {line.split(None, 1)[0]: line.split(None, 1)[1] if " " in line else ""
            for line in REDIS_CONF.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")}
    assert conf["save"] == '""' and conf["appendonly"] == "no"
    assert conf["protected-mode"] == "yes" and conf["requirepass"] and conf["bind"]
    assert conf["maxmemory-policy"] and conf["maxmemory"]


def test_redis_starts_with_the_configuration(tmp_path: Path) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: deploy/redis/redis.conf is not loaded")
    import redis

    port = free_port()
    conf = re.sub(r"^bind .*$", "bind 127.0.0.1", REDIS_CONF.read_text(encoding="utf-8"), flags=re.MULTILINE)
    conf = re.sub(r"^port .*$", f"port {port}", conf, flags=re.MULTILINE) + f"\ndir {tmp_path}\n"
    password = re.search(r"^requirepass (\S+)", conf, re.MULTILINE).group(1)  # type: ignore[union-attr]
    (tmp_path / "redis.conf").write_text(conf, encoding="utf-8")
    process = subprocess.Popen([server, str(tmp_path / "redis.conf")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port, password=password, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        assert client.publish("renkei-test", b"1") == 0  # what the services do with it
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        with pytest.raises(redis.ResponseError):
            client.config_get("requirepass")  # renamed away
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


# Backup and restore --------------------------------------------------------------------------------------


NOTE = "褥瘡の経過: 仙骨部 2 cm、発赤なし。\n".encode()


def pg_tools_missing() -> str | None:
    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None and not list(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}")):
            return f"{tool} is not installed (postgresql-client)"
    return None


class Deployment:
    """One deployment's storage (databases, data directory) and a way to serve it, stop it and wipe it."""

    def __init__(self, backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.backend = backend
        self.data_dir = tmp_path / "data"
        self.databases: PostgresDatabases | None = None
        self.urls: dict[str, str] = {}
        if backend == "postgresql":
            self.databases = request.getfixturevalue("pg_databases")
            self.urls = {service: self.databases.create(f"deploy_{service}") for service in ("auth", "share")}

    def settings(self, port: int) -> Settings:
        overrides = {f"{service}_database_url": url for service, url in self.urls.items()}
        return settings_for_tests(str(self.data_dir), port, **overrides)

    def environment(self) -> dict[str, str]:
        """What the scripts are given: the services' own variables (and none of the caller's RENKEI_*)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_")}
        env["RENKEI_DATA_DIR"] = str(self.data_dir)
        for service, url in self.urls.items():
            env[f"RENKEI_{service.upper()}_DATABASE_URL"] = url  # postgresql+psycopg://…, as the services take it
        env["COLUMNS"] = "200"
        return env

    def serve(self) -> LiveServer:
        port = free_port()
        settings = self.settings(port)
        self.data_dir.mkdir(exist_ok=True)
        for service in ("auth", "share"):
            engine = make_engine(getattr(settings, f"resolved_{service}_database_url"))
            upgrade(service, engine)
            engine.dispose()
        return LiveServer(settings, port).start()

    def wipe(self) -> None:
        """The disaster: databases emptied (dropped and created again), key files and blobs gone."""
        shutil.rmtree(self.data_dir)
        if self.databases is not None:
            with self.databases.admin.connect() as connection:
                for url in self.urls.values():
                    name = url.rsplit("/", 1)[1]
                    connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
                    connection.execute(text(f'CREATE DATABASE "{name}"'))

    def share_tables(self) -> list[str]:
        if self.databases is None:
            path = self.data_dir / "share.db"
            if not path.exists():
                return []
            url = f"sqlite:///{path}"
        else:
            url = self.urls["share"]
        engine = create_engine(url)
        try:
            return inspect(engine).get_table_names()
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    if request.param == "postgresql":
        require(pg_tools_missing(), "pg_dump/pg_restore")
    yield Deployment(request.param, tmp_path, request)


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_backup_restore_round_trip(deployment: Deployment, tmp_path: Path) -> None:
    # A deployment with a patient, an attachment and the audit records of both.
    server = deployment.serve()
    try:
        network = make_network(server)
        headers = network.bearer("physician")
        with server.client() as http:
            patient_id = created_id(create(http, headers, patient()))
            binary = http.post("/fhir/Binary", content=NOTE, headers={
                **headers, "Content-Type": "text/plain; charset=utf-8", "X-Security-Context": f"Patient/{patient_id}"})
            assert binary.status_code == 201, binary.text
            binary_id = binary.json()["id"]
    finally:
        server.stop()
    keys = {p.name: p.read_bytes() for p in (deployment.data_dir / "keys").iterdir()}
    assert {"auth-master.key", "share-kek-1.key", "share-index.key"} <= set(keys)

    env = deployment.environment()
    made = run(BACKUP, str(tmp_path / "backups"), env=env)
    assert made.returncode == 0, made.stderr
    backup = Path(made.stdout.strip().splitlines()[-1])
    database_files = {"postgresql": {"auth.dump", "share.dump"}, "sqlite": {"auth.sqlite", "share.sqlite"}}
    assert {p.name for p in backup.iterdir()} == {
        "MANIFEST.sha256", "backup.info", "keys.tar", "blobs.tar", *database_files[deployment.backend]}
    assert backup.stat().st_mode & 0o077 == 0, "the backup holds keys: owner only"
    assert run(RESTORE, "--verify-only", str(backup), env=env).returncode == 0

    deployment.wipe()
    assert deployment.share_tables() == []

    # Tampered copies are refused before anything is restored.
    for damage in ("share", "keys", "extra"):
        copy = tmp_path / f"tampered-{damage}"
        shutil.copytree(backup, copy)
        if damage == "extra":
            (copy / "share.sql").write_text("DROP TABLE audit_log;")
        else:
            target = next(copy.glob(f"{damage}.*"))
            content = bytearray(target.read_bytes())
            content[len(content) // 2] ^= 0x01
            target.write_bytes(bytes(content))
        refused = run(RESTORE, str(copy), env=env)
        assert refused.returncode != 0, damage
        assert "manifest" in refused.stderr and "not restoring" in refused.stderr, refused.stderr
        assert not deployment.data_dir.exists() and deployment.share_tables() == [], damage

    restored = run(RESTORE, str(backup), env=env)
    assert restored.returncode == 0, restored.stderr + restored.stdout
    assert {p.name: p.read_bytes() for p in (deployment.data_dir / "keys").iterdir()} == keys
    assert (deployment.data_dir / "keys").stat().st_mode & 0o077 == 0

    # The restored deployment serves what it served: users log in (TOTP secrets decrypt under the restored master
    # key), the patient reads back (data keys unwrap under the restored KEK), the attachment too (blob restored).
    server = deployment.serve()
    try:
        again = replace(network, server=server)
        headers = again.bearer("physician")
        with server.client() as http:
            assert http.get("/readyz").status_code == 200
            read = http.get(f"/fhir/Patient/{patient_id}", headers=headers)
            assert read.status_code == 200, read.text
            assert read.json()["name"][0]["family"] == FAMILY
            attachment = http.get(f"/fhir/Binary/{binary_id}", headers={**headers, "Accept": "text/plain"})
            assert attachment.status_code == 200, attachment.text
            assert attachment.content == NOTE
    finally:
        server.stop()

    # The audit chain came back whole, checked by the daily unit's own script (twice: the second run is given the
    # anchor the first one kept).
    anchors = tmp_path / "anchors"
    for _ in range(2):
        verified = subprocess.run(["sh", "-ec", audit_verify_script(anchors)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "the audit chain is intact" in verified.stdout
    kept = (anchors / "renkei-audit").read_text().split()
    assert len(kept) == 2 and re.fullmatch(r"[1-9]\d*:[0-9a-f]{64}", kept[0]), kept


def audit_verify_script(anchors: Path) -> str:
    """The shell script of renkei-audit-verify.service as sh runs it: systemd's $$ is $, continuation lines
    joined; the anchors and the program where this test has them."""
    unit = (SYSTEMD / "renkei-audit-verify.service").read_text(encoding="utf-8")
    found = re.search(r"^ExecStart=/bin/sh -ec '(.*?)'$", unit, re.MULTILINE | re.DOTALL)
    assert found, "renkei-audit-verify.service runs one sh -ec script"
    anchors.mkdir(exist_ok=True)
    return (found.group(1).replace("\\\n", "\n").replace("$$", "$")
            .replace("/var/lib/renkei-anchors", str(anchors))
            .replace("/opt/renkei/venv/bin/renkei", f"{shlex.quote(sys.executable)} -m services.cli"))
