# Shared set-up for bin/run and bin/test: a virtual environment, node packages, PostgreSQL and
# Redis, each checked first and installed or started only when missing. Sourced, not run.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
  command -v apt-get >/dev/null || { echo "cannot install $*: no apt-get; install it by hand" >&2; return 1; }
  if [ -z "${_APT_UPDATED:-}" ]; then as_root apt-get update -qq >/dev/null; _APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "Python 3.11+ is required" >&2; return 1
}

ensure_python_env() {
  local stamp="$VENV/.installed-$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -x "$PY" ]; then
    say "creating the virtual environment (.venv)"
    "$(find_python)" -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ]; then
    say "installing Python dependencies"
    mkdir -p "$REPO_ROOT/var"
    if ! { "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q -e "$REPO_ROOT[dev,local]"; } \
      >"$REPO_ROOT/var/pip-install.log" 2>&1; then
      tail -30 "$REPO_ROOT/var/pip-install.log" >&2
      echo "installing Python dependencies failed (full log: var/pip-install.log)" >&2
      return 1
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

ensure_node_modules() {
  command -v npm >/dev/null || { say "installing Node.js"; apt_install nodejs npm; }
  "$PY" -c 'from autopay.devtools.anvil import ensure_node_modules; ensure_node_modules()'
}

postgres_up() {
  "$PY" - <<'PY' 2>/dev/null
import psycopg, sys
try:
    psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", connect_timeout=2).close()
except Exception:
    sys.exit(1)
PY
}

ensure_postgres() {
  postgres_up && return 0
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "installing PostgreSQL"
    apt_install postgresql
    # Local development: trust connections from this machine only.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
      as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    done
  fi
  say "starting PostgreSQL"
  for version in $(ls /etc/postgresql); do
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  for _ in $(seq 1 30); do postgres_up && return 0; sleep 1; done
  echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; return 1
}

ensure_database() {  # ensure_database NAME
  "$PY" - "$1" <<'PY'
import sys, psycopg
name = sys.argv[1]
with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
        conn.execute(f'CREATE DATABASE "{name}"')
PY
}

redis_up() {
  "$PY" -c 'import redis,sys; redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()' 2>/dev/null
}

ensure_redis() {
  redis_up && return 0
  command -v redis-server >/dev/null || { say "installing Redis"; apt_install redis-server; }
  say "starting Redis"
  mkdir -p "$REPO_ROOT/var"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$REPO_ROOT/var" --logfile "$REPO_ROOT/var/redis.log"
  for _ in $(seq 1 30); do redis_up && return 0; sleep 0.5; done
  echo "Redis is not reachable on 127.0.0.1:6379" >&2; return 1
}

# The browser of the browser tests (tests/browser/): Debian's chromium. Playwright's own browser
# download is not used (it is not reachable everywhere the tests run).
CHROMIUM="${AUTOPAY_CHROMIUM:-/usr/bin/chromium}"
ensure_chromium() {
  [ -x "$CHROMIUM" ] && return 0
  say "installing Chromium (browser tests)"
  apt_install chromium
}

# --- Docker (bin/test-deploy) ---------------------------------------------------------------------

docker_up() { docker info >/dev/null 2>&1; }

# A running Docker engine: Debian's docker.io is installed when there is no engine, and the
# engine is started (systemd, else dockerd in the background, logging to /var/log/dockerd.log).
# Returns 1, having said why, when that cannot be done.
ensure_docker() {
  docker_up && return 0
  if ! command -v dockerd >/dev/null; then
    say "installing Docker (Debian's docker.io)"
    apt_install docker.io || { echo "installing docker.io failed" >&2; return 1; }
  fi
  say "starting the Docker engine"
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    as_root systemctl start docker 2>/dev/null || true
  fi
  if ! docker_up; then
    if [ "$(id -u)" != 0 ]; then
      echo "the Docker engine is not running, and starting it needs root" >&2; return 1
    fi
    setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
  fi
  for _ in $(seq 1 60); do docker_up && return 0; sleep 0.5; done
  echo "the Docker engine did not start (log: /var/log/dockerd.log)" >&2; return 1
}

# Prints the compose command: the `docker compose` plugin, else docker-compose (installed from
# Debian's packages when neither is there).
compose_command() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"; return 0; fi
  if ! command -v docker-compose >/dev/null; then
    say "installing docker-compose (Debian's package)"
    apt_install docker-compose || { echo "installing docker-compose failed" >&2; return 1; }
  fi
  echo "docker-compose"
}
