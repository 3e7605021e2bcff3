#!/usr/bin/env bash
# Throwaway Redis and PostgreSQL for llmbatch's tests and benchmarks:
#
#   bash scripts/services.sh start|stop|status|restart [redis|postgres]
#   bash scripts/services.sh restart-redis [--kill] | restart-postgres [--immediate] | env
#
# The implementation (and the settings LLMBATCH_REDIS_PORT, LLMBATCH_PG_PORT, LLMBATCH_PG_DATA,
# LLMBATCH_PG_DB) is tests/support/services.py, which conftest and the benchmarks use too. It needs only
# the standard library, so any python3 runs it before .venv exists.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(command -v python3)"
cd "$ROOT"
exec "$PY" -m tests.support.services "$@"
