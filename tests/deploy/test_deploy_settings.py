"""Production settings and the local `bin/manage` wrapper, each run as a real subprocess.

* ``manage.py check --deploy`` is clean with the variables of ``.env.example`` (what compose
  passes to the app containers), and warns with the laptop defaults.
* Behind the TLS proxy (``X-Forwarded-Proto: https``) those variables give HSTS and secure
  cookies; plain HTTP is redirected, except the probes (/health, /metrics).
* ``bin/manage`` keeps values that contain ``=`` (Fernet keys end with it) and says so, on
  stderr, when the environment overrides a value of ``var/``; it never exits silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / ".env.example"
BIN_MANAGE = REPO / "bin" / "manage"
SECURITY_VARIABLES = (
    "DJANGO_SECURE_SSL_REDIRECT",
    "DJANGO_SECURE_COOKIES",
    "DJANGO_SECURE_HSTS_SECONDS",
    "DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "DJANGO_SECURE_HSTS_PRELOAD",
)


def dotenv(path: Path) -> dict[str, str]:
    """KEY=value lines as compose's env_file reads them: verbatim after the first "="."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value
    return values


def production_environment() -> dict[str, str]:
    """.env.example plus what compose.yaml adds, and nothing of this test process."""
    example = dotenv(ENV_EXAMPLE)
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        **example,
        "DATABASE_URL": f"postgres://autopay:{example['POSTGRES_PASSWORD']}@postgres:5432/autopay",
        "REDIS_URL": "redis://redis:6379/0",
        "LOG_LEVEL": "WARNING",
    }


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_env_example_sets_every_security_variable() -> None:
    example = dotenv(ENV_EXAMPLE)
    for name in SECURITY_VARIABLES:
        assert name in example, f"{name} must be set in .env.example"
    assert int(example["DJANGO_SECURE_HSTS_SECONDS"]) >= 31536000


def test_check_deploy_is_clean_with_the_production_variables() -> None:
    result = check_deploy(production_environment())

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output, output
    assert "WARNINGS" not in output, output


def test_check_deploy_warns_with_the_laptop_defaults() -> None:
    """The defaults keep http://localhost working; check --deploy says what they lack."""
    env = {
        key: value
        for key, value in production_environment().items()
        if key not in SECURITY_VARIABLES
    }
    result = check_deploy(env)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in output, output


PROBE = r"""
import json, django
django.setup()
from django.test import Client

client = Client(HTTP_HOST="autopay.example.com")
https = client.get("/api/nope", HTTP_X_FORWARDED_PROTO="https")
login = client.get("/api/auth/login/", HTTP_X_FORWARDED_PROTO="https")
plain = client.get("/api/nope")
probe = client.get("/metrics")
print(json.dumps({
    "https_status": https.status_code,
    "https_type": https["Content-Type"],
    "hsts": https.get("Strict-Transport-Security"),
    "csrf_cookie_secure": bool(login.cookies["csrftoken"]["secure"]),
    "plain_status": plain.status_code,
    "plain_location": plain.get("Location"),
    "probe_status": probe.status_code,
}))
"""


def run_probe(code: str, env: dict[str, str]) -> Any:
    """What the app answered in a process of its own with ``env``, as ``code`` prints it."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_behind_the_proxy_the_production_variables_give_hsts_secure_cookies_and_redirects() -> None:
    seen = run_probe(PROBE, production_environment())

    assert seen["https_status"] == 404
    assert seen["https_type"].startswith("application/json")
    assert seen["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert seen["csrf_cookie_secure"] is True
    assert seen["plain_status"] == 301
    assert seen["plain_location"] == "https://autopay.example.com/api/nope"
    # Probes and scrapers inside the network talk plain HTTP (SECURE_REDIRECT_EXEMPT).
    assert seen["probe_status"] != 301


FORWARDED_PROBE = r"""
import json, django
django.setup()
from django.test import Client

answer = Client(HTTP_HOST="autopay.example.com").get("/api/nope", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({"status": answer.status_code, "location": answer.get("Location")}))
"""


@pytest.mark.parametrize("trusted", ["true", "false", None])
def test_forwarded_proto_is_trusted_only_behind_the_declared_proxy(trusted: str | None) -> None:
    """A client that talks plain HTTP straight to the app cannot claim HTTPS with
    X-Forwarded-Proto unless DJANGO_TRUSTED_PROXY says a proxy of ours sets (and replaces) it."""
    env = production_environment()
    env.pop("DJANGO_TRUSTED_PROXY", None)
    if trusted is not None:
        env["DJANGO_TRUSTED_PROXY"] = trusted
    seen = run_probe(FORWARDED_PROBE, env)

    if trusted == "true":
        assert seen["status"] == 404, seen  # taken as HTTPS: answered
    else:
        # Taken as the plain HTTP it is: redirected to HTTPS, whatever the header says.
        assert seen == {"status": 301, "location": "https://autopay.example.com/api/nope"}


# --- bin/manage ------------------------------------------------------------------------------


def run_manage(
    var_dir: Path, code: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "AUTOPAY_VAR_DIR": str(var_dir),
        # Set, so that bin/manage does not probe for a Redis; nothing here connects.
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    return subprocess.run(
        [str(BIN_MANAGE), "shell", "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRINT_ENV = (
    "import json, os; print(json.dumps({name: os.environ.get(name) for name in "
    "('DJANGO_SECRET_KEY', 'AUTOPAY_KEY_ENCRYPTION_KEY', 'DEMO_OPERATOR_PASSWORD', "
    "'TOKEN_ADDRESS', 'CHAIN_RPC_URL')}))"
)


@pytest.fixture
def var_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A var/ as bin/run leaves it: dev.env (secrets) and token.env (no final newline)."""
    values = {
        "DJANGO_SECRET_KEY": "dev-secret-with=equals==",
        "AUTOPAY_KEY_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "DEMO_OPERATOR_PASSWORD": "pass=word",
    }
    assert values["AUTOPAY_KEY_ENCRYPTION_KEY"].endswith("=")
    (tmp_path / "dev.env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    token = "0x" + "ab" * 20
    (tmp_path / "token.env").write_text(
        f"TOKEN_ADDRESS={token}\nCHAIN_RPC_URL=http://127.0.0.1:8545"
    )
    return tmp_path, {**values, "TOKEN_ADDRESS": token, "CHAIN_RPC_URL": "http://127.0.0.1:8545"}


def test_bin_manage_keeps_values_with_equals_signs(var_dir: tuple[Path, dict[str, str]]) -> None:
    directory, expected = var_dir
    result = run_manage(directory, PRINT_ENV)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == expected
    Fernet(seen["AUTOPAY_KEY_ENCRYPTION_KEY"].encode())  # a valid key, trailing "=" kept
    assert "overrides" not in result.stderr


def test_bin_manage_says_when_the_environment_overrides_var(
    var_dir: tuple[Path, dict[str, str]],
) -> None:
    """The overridden variable is the last line of dev.env: the loop used to end on a false
    test there and `set -e` ended the script with status 1 and no message."""
    directory, expected = var_dir
    overrides = {"DEMO_OPERATOR_PASSWORD": "from-the-environment", "DJANGO_SECRET_KEY": "env-key"}
    result = run_manage(directory, PRINT_ENV, overrides)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {**expected, **overrides}
    for name in overrides:
        assert f"bin/manage: {name} is set in the environment; it overrides the value in" in (
            result.stderr
        )
        # Named, never shown.
        assert expected[name] not in result.stderr
        assert overrides[name] not in result.stderr
    assert "AUTOPAY_KEY_ENCRYPTION_KEY" not in result.stderr


def test_bin_manage_is_quiet_when_the_environment_agrees(
    var_dir: tuple[Path, dict[str, str]],
) -> None:
    directory, expected = var_dir
    same = {"DJANGO_SECRET_KEY": expected["DJANGO_SECRET_KEY"]}
    result = run_manage(directory, PRINT_ENV, same)

    assert result.returncode == 0, result.stderr
    assert "overrides" not in result.stderr


def test_bin_manage_skips_comments_and_reports_malformed_lines(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    (tmp_path / "dev.env").write_text(
        f"# generated by bin/run\n\nnot a variable line\nAUTOPAY_KEY_ENCRYPTION_KEY={key}\r\n"
    )
    result = run_manage(tmp_path, PRINT_ENV)

    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["AUTOPAY_KEY_ENCRYPTION_KEY"] == key
    assert "ignoring line 3 of" in result.stderr
    assert "not a variable line" not in result.stderr
