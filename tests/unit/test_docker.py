"""The Dockerfile and the production compose profile, read as files (no Docker engine here):
the service commands, the /health checks, the unprivileged user, and every variable a service
needs, parsed by ``DataLayerConfig.from_env`` as the container would."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from satellites_es.cli import app
from satellites_es.config import DataLayerConfig
from satellites_es.projections.discovery import load_projections

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    last_from = max(i for i, ln in enumerate(lines) if ln.startswith("FROM "))
    return [tuple(ln.split(" ", 1)) for ln in lines[last_from:]]  # type: ignore[misc]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.production.yml").read_text())
    return loaded


def test_the_image_runs_unprivileged_with_the_cli_and_a_health_check() -> None:
    final = _dockerfile()
    users = [args for op, args in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["satellites-es"]') in final
    health = next(args for op, args in final if op == "HEALTHCHECK")
    assert "http://127.0.0.1:8080/health" in health
    env = " ".join(args for op, args in final if op == "ENV")
    assert "SATELLITES_HTTP_PORT=8080" in env and "SATELLITES_HTTP_HOST=0.0.0.0" in env
    module = re.search(r"SATELLITES_PROJECTIONS_MODULE=(\S+)", env)
    assert module and module[1] == "satellites_es.demo.projections"
    assert load_projections(module[1])  # the module the image names is in the wheel
    copied = [args for op, args in final if op == "COPY"]
    assert any("/wheels" in c for c in copied)


def test_every_compose_command_is_a_real_cli_command() -> None:
    known = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    known |= {g.name for g in app.registered_groups if g.name}
    for name, service in _compose()["services"].items():
        if service.get("image", "").startswith("satellites-es"):
            assert service["command"][0] in known, name


@pytest.mark.parametrize(("service", "command", "role"), [
    ("relay", ["relay"], "satellites_reader"),
    ("projector", ["project", "--projection", "all"], "satellites_reader"),
    ("migrate", ["migrate", "--no-create-database"], "satellites_owner"),
])  # fmt: skip
def test_services_run_with_their_role_over_verified_tls(
    service: str, command: list[str], role: str, tmp_path: Path
) -> None:
    compose = _compose()
    svc = compose["services"][service]
    assert svc["command"] == command and "production" in svc["profiles"]
    if service in ("relay", "projector"):
        test = " ".join(svc["healthcheck"]["test"])
        assert "http://127.0.0.1:8080/health" in test
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    env = {k: str(v) for k, v in svc["environment"].items()}
    # the secrets the container gets are mounted at /run/secrets/NAME: stand them in locally
    for key, value in list(env.items()):
        if key.endswith("_FILE"):
            secret = Path(value).name
            assert secret in svc["secrets"], (service, key)
            (tmp_path / secret).write_text("pw\n")
            env[key] = str(tmp_path / secret)
    config = DataLayerConfig.from_env(env)
    assert config.postgres.user == role and config.postgres.password == "pw"
    assert config.postgres.effective_sslmode == "verify-full"
    assert config.postgres.sslrootcert == "/run/tls/ca.pem"
    assert config.redis.ssl and config.redis.ssl_cert_reqs == "required"
    assert (
        config.rabbitmq.ssl and not config.rabbitmq.no_verify_ssl and config.rabbitmq.port == 5671
    )
    assert config.elasticsearch.tls and config.elasticsearch.ca_certs == "/run/tls/ca.pem"
    if service == "projector":
        assert config.relay.enabled is False


def test_the_roles_service_creates_the_roles_the_services_use() -> None:
    services = _compose()["services"]
    args = services["roles"]["command"]
    assert args[:2] == ["db", "roles"]
    named = {args[i]: args[i + 1] for i in range(2, len(args) - 1) if args[i].startswith("--")
             and args[i] != "--password-file"}  # fmt: skip
    assert named == {"--owner": "satellites_owner", "--producer": "satellites_producer",
                     "--reader": "satellites_reader"}  # fmt: skip
    users = {DataLayerConfig.from_env({"SATELLITES_POSTGRES_URL": services[s]["environment"][
        "SATELLITES_POSTGRES_URL"]}).postgres.user for s in ("migrate", "relay", "projector")}  # fmt: skip
    assert users == {"satellites_owner", "satellites_reader"}
