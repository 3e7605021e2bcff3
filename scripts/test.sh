#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest args...]
#
# Creates .venv if needed, installs llmbatch with its dev extras, starts the throwaway Redis and
# PostgreSQL (scripts/services.sh), runs pytest with the URLs exported, and stops again whichever
# service it had to start (LLMBATCH_KEEP_SERVICES=1 keeps them). Exits with pytest's exit code.
#
# With CI=true the services must come up: if they cannot, this fails before any test runs, and
# tests/conftest.py turns any skipped test into a failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

is_ci() { [[ "${CI:-}" =~ ^([Tt][Rr][Uu][Ee]|1|[Yy][Ee][Ss])$ ]]; }
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

# ---- services
started=()
if [[ -n "${LLMBATCH_TEST_REDIS_URL:-}" && -n "${LLMBATCH_TEST_DATABASE_URL:-}" ]]; then
    log "using the given LLMBATCH_TEST_REDIS_URL and LLMBATCH_TEST_DATABASE_URL"
else
    for s in redis postgres; do
        bash scripts/services.sh status "$s" 2>/dev/null || started+=("$s")
    done
    cleanup() {
        if [[ ${#started[@]} -gt 0 && -z "${LLMBATCH_KEEP_SERVICES:-}" ]]; then
            for s in "${started[@]}"; do bash scripts/services.sh stop "$s" || true; done
        fi
    }
    trap cleanup EXIT
    if urls="$(bash scripts/services.sh start </dev/null)"; then
        while IFS='=' read -r key value; do
            [[ "$key" == LLMBATCH_TEST_* ]] || continue
            # A URL given by the caller wins over the default one.
            [[ -n "${!key:-}" ]] || export "$key=$value"
        done <<<"$urls"
    elif is_ci; then
        log "ERROR: Redis/PostgreSQL could not be started (see above). CI must run the integration tests against real services."
        exit 1
    else
        log "WARNING: Redis/PostgreSQL could not be started; integration tests will be skipped."
    fi
fi
log "LLMBATCH_TEST_REDIS_URL=${LLMBATCH_TEST_REDIS_URL:-<unset>} LLMBATCH_TEST_DATABASE_URL=${LLMBATCH_TEST_DATABASE_URL:-<unset>}"

# ---- lint and types (both configured in pyproject.toml: ruff's rules; mypy on src/llmbatch, strict on the pure modules)
.venv/bin/ruff check src tests
.venv/bin/mypy

# ---- tests
rc=0
.venv/bin/python -m pytest "$@" </dev/null || rc=$?
exit "$rc"
