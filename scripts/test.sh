#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest args...]
#
# Creates .venv if needed, installs llmbatch with its dev extras, runs `ruff check`, `ruff format --check`
# and mypy, then pytest. The
# throwaway Redis and PostgreSQL are tests/conftest.py's business (tests/support/services.py): unless
# LLMBATCH_TEST_REDIS_URL and LLMBATCH_TEST_DATABASE_URL are given, the session starts them (ports
# LLMBATCH_REDIS_PORT / LLMBATCH_PG_PORT), exports those URLs to every process it starts, and stops at
# the end whichever server it had to start (LLMBATCH_KEEP_SERVICES=1 keeps them). Exits with pytest's
# exit code.
#
# With CI=true the services must come up: if they cannot, the session fails before any test runs, and
# any skipped test fails the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { echo "test.sh: $*" >&2; }

# ---- virtualenv: reinstall only when pyproject.toml changed (always on a fresh clone)
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.llmbatch-dev-install"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]] || ! .venv/bin/python -c "import llmbatch, pytest" 2>/dev/null; then
    log "pip install -e '.[dev]'"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip </dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]' </dev/null
    echo "$want" >"$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export VIRTUAL_ENV="$ROOT/.venv"

# ---- lint and types (both configured in pyproject.toml: ruff's rules; mypy on src/llmbatch, strict on the pure modules)
.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy

# ---- tests
rc=0
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
exit "$rc"
