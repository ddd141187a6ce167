"""Static checks of the deployment files (Dockerfile, compose.yaml, .env.example, docker/).

The files are checked by parsing them: the Dockerfile with a small parser below, compose.yaml
with PyYAML and a compose-style interpolation of ${...} references, .env.example as a dotenv
file. The entrypoint, the healthcheck script, the gunicorn settings and the wheel preparation
are real programs and are run here. When a compose implementation is installed (the
`docker compose` plugin or docker-compose), it validates compose.yaml as well (no daemon
needed). The real thing, an image built and the stack run end to end, is bin/test-deploy.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SETTINGS = REPO / "config" / "settings.py"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
GUNICORN_CONF = REPO / "docker" / "gunicorn.conf.py"
PREPARE_WHEELS = REPO / "docker" / "prepare_wheels.py"
LOCAL_BASE = REPO / "docker" / "local-base"
TEST_OVERRIDE = REPO / "docker" / "compose.deploy-test.yaml"

APP_SERVICES = ("migrate", "web", "worker", "beat")
LONG_RUNNING = ("postgres", "redis", "web", "worker", "beat")
REQUIRED_SECRETS = ("DJANGO_SECRET_KEY", "AUTOPAY_KEY_ENCRYPTION_KEY", "RELAYER_PRIVATE_KEY")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PRIVATE_KEY|ENCRYPTION_KEY|TOKEN$|AUTH_HEADER")
PLACEHOLDER = "CHANGE-ME"

# Variables that are not Django settings, and the file that consumes each one. Every other
# variable in compose.yaml or .env.example must be read by config/settings.py.
NON_SETTINGS_VARIABLES: dict[str, Path] = {
    "POSTGRES_PASSWORD": COMPOSE,
    "POSTGRES_USER": COMPOSE,
    "POSTGRES_DB": COMPOSE,
    "AUTOPAY_IMAGE": COMPOSE,
    "AUTOPAY_ENV_FILE": COMPOSE,
    "COMPOSE_PROJECT_NAME": COMPOSE,
    "PYTHON_IMAGE": COMPOSE,
    "POSTGRES_IMAGE": COMPOSE,
    "REDIS_IMAGE": COMPOSE,
    "WEB_PORT": COMPOSE,
    "WORKER_CONCURRENCY": COMPOSE,
    "WEB_CONCURRENCY": GUNICORN_CONF,
    "WEB_THREADS": GUNICORN_CONF,
    "GUNICORN_TIMEOUT": GUNICORN_CONF,
    "GUNICORN_LOG_LEVEL": GUNICORN_CONF,
    "RUN_MIGRATIONS": ENTRYPOINT,
    # Read by autopay/metrics.py from settings, or from the environment until settings has it.
    "METRICS_TOKEN": REPO / "autopay" / "metrics.py",
}


# --- a tiny Dockerfile parser ----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form (["a", "b"]) of CMD/ENTRYPOINT/RUN, or None for shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(item, str) for item in value)
        return value

    def flags_and_operands(self) -> tuple[dict[str, str], list[str]]:
        """--flag=value options and the remaining operands (COPY, ADD, FROM)."""
        exec_form = self.exec_form() if self.keyword in ("COPY", "ADD") else None
        tokens = exec_form if exec_form is not None else shlex.split(self.args)
        flags: dict[str, str] = {}
        operands: list[str] = []
        for token in tokens:
            if token.startswith("--") and not operands:
                name, _, value = token[2:].partition("=")
                flags[name] = value
            else:
                operands.append(token)
        return flags, operands


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [item for item in self.instructions if item.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with their line numbers; comments dropped, continuation lines joined."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buffer):
            continue  # comments (and blank lines) may sit inside a continued instruction
        if not stripped:
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        keyword, _, args = " ".join(buffer).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = []
    assert not buffer, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages (FROM base with ARG references resolved)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.args.partition("=")
            global_args[name.strip()] = default.strip()
        elif instruction.keyword == "FROM":
            _, operands = instruction.flags_and_operands()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda match: global_args.get(match.group(1), ""), operands[0]
            )
            alias = operands[2] if len(operands) == 3 and operands[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        else:
            assert stages or instruction.keyword == "ARG", f"{instruction} before the first FROM"
            if stages:
                stages[-1].instructions.append(instruction)
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages()[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def copy_sources(stage: Stage) -> list[str]:
    """Sources copied from the build context (not from another stage) in a stage."""
    sources: list[str] = []
    for instruction in stage.all("COPY") + stage.all("ADD"):
        flags, operands = instruction.flags_and_operands()
        if "from" not in flags:
            sources.extend(operands[:-1])
    return sources


# --- .dockerignore ------------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            char = pattern[index]
            if pattern.startswith("**/", index):
                regex += "(?:.*/)?"
                index += 3
                continue
            if pattern.startswith("**", index):
                regex += ".*"
                index += 2
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = pattern.index("]", index)
                regex += pattern[index : end + 1]
                index = end + 1
                continue
            else:
                regex += re.escape(char)
            index += 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def is_dockerignored(relative_path: str) -> bool:
    """True when .dockerignore keeps the path (or a directory above it) out of the context."""
    parts = Path(relative_path).parts
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    excluded = False
    for negated, regex in dockerignore_rules():
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# --- compose.yaml and .env.example ----------------------------------------------------------------


class MissingVariable(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+alt}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if match.group("named"):
            return env.get(match.group("named"), "")
        braced = _BRACED.fullmatch(match.group("braced"))
        assert braced, f"invalid interpolation ${{{match.group('braced')}}}"
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg")
        assert "$" not in (arg or ""), "nested interpolation is not used here"
        value = env.get(name)
        if op is None:
            return value or ""
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else str(value)
        if op.endswith("?"):
            if missing:
                raise MissingVariable(name, arg)
            return str(value)
        return "" if missing else arg  # ":+" / "+"

    return _REFERENCE.sub(replace, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def referenced_variables(node: Any) -> set[str]:
    names: set[str] = set()
    for text in strings(node):
        for match in _REFERENCE.finditer(text):
            if match.group("named"):
                names.add(match.group("named"))
            elif match.group("braced"):
                braced = _BRACED.fullmatch(match.group("braced"))
                assert braced
                names.add(braced.group("name"))
    return names


def parse_dotenv(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, value = line.partition("=")
        assert separator, f"not NAME=value: {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def dotenv_listed_names(text: str) -> set[str]:
    """Names set in the file or shown commented out as "# NAME=default"."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.M))


def settings_variables() -> set[str]:
    return set(re.findall(r"env(?:\.[a-z_]+)?\(\s*\"([A-Z][A-Z0-9_]*)\"", SETTINGS.read_text()))


def compose_data(path: Path = COMPOSE) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_data()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_dotenv(ENV_EXAMPLE.read_text())


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any], env_example: dict[str, str]) -> dict[str, Any]:
    """compose.yaml as `docker compose --env-file .env.example config` would see it."""
    result = interpolate_tree(compose, env_example)
    assert isinstance(result, dict)
    return result


def command_list(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


# --- Dockerfile -------------------------------------------------------------------------------


def stage(stages: list[Stage], name: str) -> Stage:
    return next(item for item in stages if item.name == name)


def test_dockerfile_is_multi_stage_on_python_slim(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    assert [item.name for item in stages[:-1]] == ["requirements", "builder"]
    for stage in stages:
        # The public image by default; --build-arg PYTHON_IMAGE=... replaces it in every stage.
        assert stage.base == "python:3.11-slim", stage
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()
    names = {stage.name for stage in stages[:-1]}
    copied_from = [
        instruction.flags_and_operands()[0]["from"]
        for instruction in stages[-1].all("COPY")
        if "from" in instruction.flags_and_operands()[0]
    ]
    assert copied_from, "the final stage copies nothing from the builder"
    assert set(copied_from) <= names


def test_builder_installs_dependencies_from_pyproject(stages: list[Stage]) -> None:
    requirements = stage(stages, "requirements")
    assert copy_sources(requirements) == ["pyproject.toml"]
    runs = " ".join(instruction.args for instruction in requirements.all("RUN"))
    assert "pyproject.toml" in runs and "['dependencies']" in runs
    builder = stage(stages, "builder")
    # Only the requirements file reaches the builder: other pyproject.toml edits keep its cache.
    copied = [
        instruction.flags_and_operands()
        for instruction in builder.all("COPY")
        if "from" in instruction.flags_and_operands()[0]
    ]
    assert copied == [({"from": "requirements"}, ["/requirements.txt", "/tmp/requirements.txt"])]
    runs = " ".join(instruction.args for instruction in builder.all("RUN"))
    assert "venv" in runs and "pip install" in runs and "-r /tmp/requirements.txt" in runs


def test_builder_installs_offline_from_prepared_wheels(stages: list[Stage]) -> None:
    builder = stage(stages, "builder")
    # The folder is always there (its README is committed, the wheels are git-ignored), so
    # the COPY works with and without prepared wheels.
    assert "docker/wheels/" in copy_sources(builder)
    assert (REPO / "docker" / "wheels" / "README.md").is_file()
    assert not is_dockerignored("docker/wheels/django-5.2-py3-none-any.whl")
    gitignore = (REPO / ".gitignore").read_text().splitlines()
    assert "docker/wheels/*" in gitignore and "!docker/wheels/README.md" in gitignore
    install = next(run.args for run in builder.all("RUN") if "pip install" in run.args)
    offline, _, online = install.partition("else")
    assert "/wheels/*.whl" in offline
    assert "pip install --no-index --find-links /wheels" in offline
    # Without wheels: the index, binary wheels first; compilers only as a fallback.
    assert "--no-index" not in online and "--only-binary=:all:" in online
    assert online.index("--only-binary") < online.index("build-essential")


def test_final_stage_runs_as_a_non_root_user(final: Stage) -> None:
    user = final.last("USER")
    assert user is not None, "no USER in the final stage: it would run as root"
    name = user.args.split(":")[0]
    assert name not in ("root", "0", "")
    assert name == "autopay"
    runs = " ".join(instruction.args for instruction in final.all("RUN"))
    assert "useradd" in runs and "autopay" in runs
    # Nothing after USER switches back.
    after = final.instructions[final.instructions.index(user) + 1 :]
    assert all(instruction.keyword != "USER" for instruction in after)


def test_final_stage_has_no_compilers_or_package_installs(final: Stage) -> None:
    for instruction in final.all("RUN"):
        for word in ("apt-get install", "apk add", "build-essential", "gcc", "g++", "make "):
            assert word not in instruction.args, f"line {instruction.line}: {word}"


def test_no_download_piped_to_a_shell(stages: list[Stage]) -> None:
    pipe_to_shell = re.compile(r"\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(ba|da|z)?sh\b")
    for stage in stages:
        for instruction in stage.all("RUN"):
            assert not pipe_to_shell.search(instruction.args), f"line {instruction.line}"
        assert not stage.all("ADD"), "use COPY; ADD fetches URLs and unpacks archives"


def test_healthcheck_probes_health_with_python(final: Stage) -> None:
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.args.partition("CMD")
    assert "--interval" in options and "--timeout" in options
    argv = json.loads(command.strip())
    assert argv[0] == "python"
    assert argv[1].endswith("docker/healthcheck.py")
    assert "docker/healthcheck.py" in " ".join(copy_sources(final))
    assert "/health/live" in HEALTHCHECK.read_text()


def test_default_command_is_gunicorn_behind_the_entrypoint(final: Stage) -> None:
    cmd = final.last("CMD")
    entrypoint = final.last("ENTRYPOINT")
    assert cmd is not None and entrypoint is not None
    argv = cmd.exec_form()
    assert argv is not None, "CMD must use the exec form so that gunicorn gets the signals"
    assert argv[0] == "gunicorn"
    assert "config.wsgi:application" in argv
    config = argv[argv.index("--config") + 1]
    assert config.endswith("docker/gunicorn.conf.py")
    entry = entrypoint.exec_form()
    assert entry is not None and entry[0].endswith("docker/entrypoint.sh")
    copied = " ".join(copy_sources(final))
    assert "docker/entrypoint.sh" in copied and "docker/gunicorn.conf.py" in copied


def test_static_files_collected_at_build_with_a_dummy_secret(final: Stage) -> None:
    runs = [instruction.args for instruction in final.all("RUN")]
    collect = [run for run in runs if "collectstatic" in run]
    assert collect, "collectstatic does not run at build time"
    assert "DJANGO_SECRET_KEY=" in collect[0] and "--noinput" in collect[0]
    assert any(instruction.args.split()[0] == "8000" for instruction in final.all("EXPOSE"))


def test_copy_sources_exist_and_are_in_the_build_context(stages: list[Stage]) -> None:
    for stage in stages:
        for source in copy_sources(stage):
            relative = source.lstrip("./") or "."
            matches = list(REPO.glob(relative)) if any(c in relative for c in "*?[") else []
            assert matches or (REPO / relative).exists(), f"COPY source {source} is missing"
            assert not is_dockerignored(relative), f"COPY source {source} is in .dockerignore"


def test_runtime_code_is_copied_into_the_final_stage(final: Stage) -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [
        name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    needed = ["manage.py", *packages]
    if (REPO / "templates").is_dir():  # settings TEMPLATES DIRS = BASE_DIR / "templates"
        needed.append("templates")
    copied = {source.rstrip("/") for source in copy_sources(final)}
    for path in needed:
        assert path in copied, f"{path} is not copied into the image"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in [
        ".venv/bin/python",
        "node_modules/solc/index.js",
        "var/autopay.sqlite3",
        ".git/HEAD",
        ".env",
        ".env.production",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        "autopay/__pycache__/metrics.cpython-312.pyc",
        "tests/conftest.py",
    ]:
        assert is_dockerignored(path), path
    for path in ["autopay/metrics.py", "pyproject.toml", "docker/entrypoint.sh", "manage.py"]:
        assert not is_dockerignored(path), path


# --- docker/ scripts, run for real ---------------------------------------------------------------


@pytest.fixture
def fake_python(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose `python` only records its arguments (the entrypoint's migrate call)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    return env, calls


def run_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_entrypoint_migrates_only_when_asked(fake_python: tuple[dict[str, str], Path]) -> None:
    env, calls = fake_python
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh is not executable"
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh")

    result = run_entrypoint(env, "echo", "started")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert not calls.exists()

    result = run_entrypoint({**env, "RUN_MIGRATIONS": "1"}, "echo", "started")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "started"
    assert calls.read_text().split() == ["-m", "django", "migrate", "--noinput"]


def test_entrypoint_refuses_env_example_placeholders(
    fake_python: tuple[dict[str, str], Path], resolved: dict[str, Any], env_example: dict[str, str]
) -> None:
    env, _ = fake_python
    app_environment = {**env_example, **resolved["services"]["web"]["environment"]}
    placeholders = {
        name: value
        for name, value in app_environment.items()
        if (PLACEHOLDER in str(value) and SECRET_NAME.search(name)) or name == "DATABASE_URL"
    }
    assert set(REQUIRED_SECRETS) | {"DATABASE_URL", "METRICS_TOKEN"} <= set(placeholders)
    for name, value in placeholders.items():
        if name == "POSTGRES_PASSWORD":
            continue  # not read by the app; it reaches it inside DATABASE_URL
        result = run_entrypoint({**env, name: str(value)}, "echo", "started")
        assert result.returncode == 78, name
        assert name in result.stderr and "started" not in result.stdout


class _HealthHandler(BaseHTTPRequestHandler):
    status = 200
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"path": self.path, **dict(self.headers.items())})
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1), (400, 1)])
def test_healthcheck_script(status: int, exit_code: int) -> None:
    _HealthHandler.status = status
    _HealthHandler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "PATH": os.environ["PATH"],
            "PORT": str(server.server_address[1]),
            "DJANGO_ALLOWED_HOSTS": ".pay.example.com,web",
        }
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == exit_code, result.stderr
    request = _HealthHandler.seen[0]
    # Liveness only: a dry relayer or an RPC outage must not take the web container down.
    assert request["path"] == "/health/live"
    # A host Django accepts, and the proxy header that avoids the HTTPS redirect.
    assert request["Host"] == "pay.example.com"
    assert request["X-Forwarded-Proto"] == "https"


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    env = {"PATH": os.environ["PATH"], "PORT": "1", "HEALTHCHECK_TIMEOUT_SECONDS": "2"}
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, timeout=30
    )
    assert result.returncode == 1


def test_gunicorn_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WEB_CONCURRENCY", "WEB_THREADS", "GUNICORN_TIMEOUT", "PORT"):
        monkeypatch.delenv(name, raising=False)
    defaults = runpy.run_path(str(GUNICORN_CONF))
    assert defaults["bind"] == "0.0.0.0:8000"
    assert 1 <= defaults["workers"] <= 8
    assert 30 <= defaults["timeout"] <= 120
    assert defaults["graceful_timeout"] <= defaults["timeout"]
    assert defaults["accesslog"] == "-"

    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    monkeypatch.setenv("GUNICORN_TIMEOUT", "90")
    tuned = runpy.run_path(str(GUNICORN_CONF))
    assert tuned["workers"] == 5 and tuned["timeout"] == 90


GUNICORN_LOGGING_PROBE = """
import runpy, sys
from gunicorn.config import Config
from gunicorn.glogging import Logger

settings = runpy.run_path(sys.argv[1])
config = Config()
for name in ("logconfig_dict", "access_log_format", "accesslog", "errorlog", "loglevel"):
    config.set(name, settings[name])
logger = Logger(config)
logger.info("Booting worker with pid: %s", 42)
"""


def test_gunicorn_logs_are_key_value() -> None:
    """gunicorn applies the logging settings (merged with its defaults) and writes key=value."""
    result = subprocess.run(
        [sys.executable, "-c", GUNICORN_LOGGING_PROBE, str(GUNICORN_CONF)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r'time=\S+ \S+ level=INFO logger=gunicorn\.error msg="Booting worker with pid: 42"', line
    ), line
    access_format = runpy.run_path(str(GUNICORN_CONF))["access_log_format"]
    pairs = re.findall(r'(\w+)=("[^"]*"|\S+)', access_format)
    assert [name for name, _ in pairs] == [
        "remote", "method", "path", "status", "bytes", "duration_ms", "user_agent"
    ]  # fmt: skip
    assert "%(q)s" not in access_format and "Authorization" not in access_format


# --- offline wheels and local base images -----------------------------------------------------


def make_wheel(folder: Path, name: str, version: str, requires: list[str]) -> None:
    import zipfile

    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    wheel = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", metadata)


def test_prepare_wheels_finds_what_the_target_python_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip marks dependencies by the interpreter that downloads; the image's may differ."""
    prepare = runpy.run_path(str(PREPARE_WHEELS))
    missing_for_target = prepare["missing_for_target"]
    monkeypatch.setitem(missing_for_target.__globals__, "WHEELS", tmp_path)
    monkeypatch.setitem(
        missing_for_target.__globals__, "runtime_requirements", lambda: ["celery[redis]>=5"]
    )
    make_wheel(tmp_path, "celery", "5.5", ['kombu>=5; python_version >= "3.8"'])
    make_wheel(
        tmp_path,
        "kombu",
        "5.5",
        [
            'redis>=5; extra == "redis"',
            'async-timeout>=4; python_full_version < "3.11.3"',
            'tomli; python_version < "3.11"',
            'pywin32; sys_platform == "win32"',
        ],
    )
    assert missing_for_target("3.11", "x86_64") == ["async-timeout>=4"]
    make_wheel(tmp_path, "async-timeout", "5.0", [])
    assert missing_for_target("3.11", "x86_64") == []
    assert missing_for_target("3.10", "x86_64") == ["tomli"]


def test_local_base_images_mirror_the_public_ones() -> None:
    for name in ("python", "postgres", "redis"):
        dockerfile = (LOCAL_BASE / f"{name}.Dockerfile").read_text()
        instructions = parse_dockerfile(dockerfile)
        assert instructions[0].keyword == "ARG" and instructions[1].args == "${DEBIAN_IMAGE}"
        # Debian's own packages, no download of anything else.
        assert "apt-get install" in dockerfile and "curl" not in dockerfile
    python = (LOCAL_BASE / "python.Dockerfile").read_text()
    assert "python3.11-venv" in python and "/usr/local/bin/python" in python
    postgres = (LOCAL_BASE / "postgres.Dockerfile").read_text()
    assert "PGDATA=/var/lib/postgresql/data" in postgres and "STOPSIGNAL SIGINT" in postgres
    for script in ("make.sh", "postgres-entrypoint.sh", "redis-entrypoint.sh"):
        path = LOCAL_BASE / script
        assert os.access(path, os.X_OK), script
        shell = "bash" if script == "make.sh" else "sh"
        assert subprocess.run([shell, "-n", str(path)], check=False).returncode == 0, script
    for script in ("test-deploy", "test", "_lib.sh"):
        path = REPO / "bin" / script
        assert subprocess.run(["bash", "-n", str(path)], check=False).returncode == 0, script


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["redis-server", "--appendonly", "yes"],
            "--protected-mode no --dir /data --appendonly yes",
        ),
        (["--appendonly", "yes"], "--protected-mode no --dir /data --appendonly yes"),
        (["redis-cli", "ping"], "ping"),
    ],
)
def test_local_redis_entrypoint(args: list[str], expected: str) -> None:
    """Like the public image: reachable from other containers, data in /data, options last."""
    folder = Path(tempfile.mkdtemp(prefix="redis-entrypoint-"))
    try:
        folder.chmod(0o755)
        for program in ("redis-server", "redis-cli"):
            fake = folder / program
            fake.write_text('#!/bin/sh\necho "$@"\n')
            fake.chmod(0o755)
        # A copy in this folder: as root the script runs as nobody, who may not be able to
        # enter the checkout (a clone under a 0700 directory, as `mktemp -d` makes).
        script = folder / "redis-entrypoint.sh"
        shutil.copyfile(LOCAL_BASE / "redis-entrypoint.sh", script)
        script.chmod(0o755)
        command = ["sh", str(script), *args]
        if os.getuid() == 0:  # as root it would chown /data and drop to the redis user
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        result = subprocess.run(
            command,
            env={"PATH": f"{folder}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_deploy_test_override_stays_on_loopback() -> None:
    override = compose_data(TEST_OVERRIDE)
    assert set(override["services"]) == {"anvil"}
    anvil = override["services"]["anvil"]
    assert anvil["ports"] == ["127.0.0.1:${ANVIL_HOST_PORT:?}:8545"]
    assert anvil["image"] == "${DEBIAN_IMAGE:?}"
    # Nothing of the stack is published on the host's well-known ports.
    text = TEST_OVERRIDE.read_text()
    for port in ("5432", "6379", "8000"):
        assert f":{port}" not in text


# --- compose.yaml --------------------------------------------------------------------------------


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"postgres", "redis", *APP_SERVICES}


def test_postgres_service(compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    assert resolved["services"]["postgres"]["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume = next(v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert volume.split(":")[0] in compose["volumes"], "PostgreSQL data needs a named volume"
    assert "ports" not in postgres


def test_redis_service_persists(compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    assert redis_service["image"] == "${REDIS_IMAGE:-redis:7}"
    assert resolved["services"]["redis"]["image"] == "redis:7"
    command = command_list(redis_service)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])
    volume = next(v for v in redis_service["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in compose["volumes"], "Redis data needs a named volume"
    assert "ports" not in redis_service


def test_app_services_share_one_image(compose: dict[str, Any], resolved: dict[str, Any]) -> None:
    images = {compose["services"][name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        build = compose["services"][name]["build"]
        assert build["context"] == "." and build["dockerfile"] == "Dockerfile"
        args = resolved["services"][name]["build"]["args"]
        assert args == {"PYTHON_IMAGE": "python:3.11-slim"}


def test_app_containers_are_hardened(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["init"] is True, name  # signals reach the process; zombies are reaped
        assert service["logging"]["options"]["max-size"], name
    # Long enough for the work in flight: gunicorn's graceful timeout, Celery's task limit.
    assert compose["services"]["web"]["stop_grace_period"] == "40s"
    assert compose["services"]["worker"]["stop_grace_period"] == "3m"


def test_compose_file_suits_compose_v1_and_v2(compose: dict[str, Any]) -> None:
    """Debian's docker-compose 1.29 rejects the top-level `name` and env_file mappings."""
    assert set(compose) <= {"services", "volumes", "networks", "configs", "secrets"} | {
        key for key in compose if key.startswith("x-")
    }
    for name in APP_SERVICES:
        env_file = compose["services"][name]["env_file"]
        assert all(isinstance(entry, str) for entry in env_file), name
    assert "COMPOSE_PROJECT_NAME=autopay" in ENV_EXAMPLE.read_text().splitlines()


def test_depends_on_waits_for_health_and_migrations(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        if name != "migrate":
            assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert "migrate" not in services["migrate"]["depends_on"]


def test_service_commands(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert command_list(services["migrate"])[-2:] == ["migrate", "--noinput"]
    web = command_list(services["web"])
    assert web[0] == "gunicorn" and "config.wsgi:application" in web
    worker = " ".join(command_list(services["worker"]))
    assert worker.startswith("celery -A config worker")
    assert "-Q autopay" in worker and "-c 4" in worker and "--prefetch-multiplier 1" in worker
    beat = " ".join(command_list(services["beat"]))
    assert beat.startswith("celery -A config beat")
    assert "--scheduler django_celery_beat.schedulers:DatabaseScheduler" in beat


def test_restart_policies_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name]["restart"] in ("always", "unless-stopped"), name
    assert services["migrate"]["restart"] in ("no", "on-failure")
    # The image's HTTP healthcheck suits only web: worker and beat override it.
    assert "python" in " ".join(services["web"]["healthcheck"]["test"])
    assert "inspect ping" in " ".join(services["worker"]["healthcheck"]["test"])
    assert services["beat"]["healthcheck"] == {"disable": True}


def test_worker_scales_and_beat_is_single(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: container_name prevents scaling"
    assert "ports" not in services["worker"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["worker"].get("deploy", {}).get("replicas", 1) >= 1


def test_database_and_redis_urls_point_at_the_services(resolved: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        environment = resolved["services"][name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://")
        assert "@postgres:5432/" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:6379")
        assert environment["DJANGO_ALLOWED_HOSTS"]
        assert resolved["services"][name]["env_file"] == [".env"]
        elsewhere = interpolate_tree(
            compose_data(), {**parse_dotenv(ENV_EXAMPLE.read_text()), "AUTOPAY_ENV_FILE": "/x"}
        )
        assert elsewhere["services"][name]["env_file"] == ["/x"]


def test_no_hard_coded_secrets(compose: dict[str, Any]) -> None:
    reference = re.compile(r"\$\{[A-Z][A-Z0-9_]*(:?[-?][^}]*)?\}")
    for service_name, service in compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{service_name}: use a mapping for environment"
        for name, value in environment.items():
            if SECRET_NAME.search(name):
                assert reference.fullmatch(str(value)), f"{service_name}.{name} is hard-coded"
        url = str(environment.get("DATABASE_URL", ""))
        if url:
            # user:password before the host: nothing literal but the ":" between references.
            userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
            assert reference.sub("", userinfo) == ":", f"{service_name}: DATABASE_URL password"
    for name in REQUIRED_SECRETS:
        value = compose["services"]["web"]["environment"][name]
        assert value.startswith(f"${{{name}:?"), f"{name} must be required with :?"
    text = COMPOSE.read_text()
    assert not re.search(r"0x[0-9a-fA-F]{64}", text), "a private key in compose.yaml"
    assert not re.search(r"[A-Za-z0-9_-]{43}=", text), "a Fernet key in compose.yaml"


def test_compose_variables_are_settings_or_known(compose: dict[str, Any]) -> None:
    known = settings_variables()
    used = referenced_variables(compose)
    for service in compose["services"].values():
        if isinstance(service.get("environment"), dict):
            used |= set(service["environment"])
    unknown = {name for name in used if name not in known and name not in NON_SETTINGS_VARIABLES}
    assert not unknown, f"not read by config/settings.py: {sorted(unknown)}"
    for name, consumer in NON_SETTINGS_VARIABLES.items():
        assert name in consumer.read_text(), f"{name} is not used by {consumer.name}"


def test_interpolation_with_env_example_and_required_secrets(
    compose: dict[str, Any], env_example: dict[str, str], resolved: dict[str, Any]
) -> None:
    web = resolved["services"]["web"]["environment"]
    password = env_example["POSTGRES_PASSWORD"]
    assert web["DATABASE_URL"] == f"postgres://autopay:{password}@postgres:5432/autopay"
    assert web["DJANGO_SECRET_KEY"] == env_example["DJANGO_SECRET_KEY"]
    assert resolved["services"]["web"]["ports"] == ["8000:8000"]
    # `$$` stays a literal `$` for the container's shell.
    assert "$HOSTNAME" in " ".join(resolved["services"]["worker"]["healthcheck"]["test"])

    for name in [*REQUIRED_SECRETS, "POSTGRES_PASSWORD", "DJANGO_ALLOWED_HOSTS"]:
        without = {key: value for key, value in env_example.items() if key != name}
        with pytest.raises(MissingVariable) as missing:
            interpolate_tree(compose, without)
        assert missing.value.name == name
        with pytest.raises(MissingVariable):
            interpolate_tree(compose, {**env_example, name: ""})


def compose_implementations() -> list[list[str]]:
    found = []
    docker = shutil.which("docker")
    if docker is not None:
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60
        )
        if version.returncode == 0:
            found.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        found.append([legacy])
    return found


@pytest.mark.parametrize("override", [False, True], ids=["compose.yaml", "with-test-override"])
def test_docker_compose_config_accepts_the_file(override: bool) -> None:
    implementations = compose_implementations()
    if not implementations:
        pytest.skip(
            "no compose implementation is installed (`docker compose` plugin or "
            "docker-compose); compose.yaml is checked by the parser-based tests above instead"
        )
    files = ["-f", str(COMPOSE)] + (["-f", str(TEST_OVERRIDE)] if override else [])
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        # The env file reaches the containers too; .env.example stands in for .env here.
        "AUTOPAY_ENV_FILE": str(ENV_EXAMPLE),
        "DEBIAN_IMAGE": "debian:12",
        "ANVIL_BINARY": "/usr/bin/true",
        "ANVIL_HOST_PORT": "18545",
    }
    for command in implementations:
        result = subprocess.run(
            [*command, *files, "--env-file", str(ENV_EXAMPLE), "config", "-q"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"


# --- .env.example -------------------------------------------------------------------------------


def test_env_example_lists_every_setting() -> None:
    listed = dotenv_listed_names(ENV_EXAMPLE.read_text())
    missing = settings_variables() - listed
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_names_are_all_read_somewhere() -> None:
    listed = dotenv_listed_names(ENV_EXAMPLE.read_text())
    unknown = listed - settings_variables() - set(NON_SETTINGS_VARIABLES)
    assert not unknown, f"read by nothing: {sorted(unknown)}"


def test_env_example_holds_no_real_secret(env_example: dict[str, str]) -> None:
    for name, value in env_example.items():
        if SECRET_NAME.search(name) and value:
            assert PLACEHOLDER in value, f"{name} must be a {PLACEHOLDER} placeholder"
    text = ENV_EXAMPLE.read_text()
    assert not re.search(r"0x[0-9a-fA-F]{64}", text), "a private key in .env.example"
    assert not re.search(r"[A-Za-z0-9_-]{43}=", text), "a Fernet key in .env.example"
    for name in [*REQUIRED_SECRETS, "POSTGRES_PASSWORD", "DJANGO_ALLOWED_HOSTS"]:
        assert env_example.get(name), f"{name} must be set (to a placeholder) in .env.example"
