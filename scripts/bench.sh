#!/usr/bin/env bash
# Throughput benchmarks (issue "throughput"). Not tests: they take minutes and print figures.
#
#   bash scripts/bench.sh                      # all: inflight overhead submit ratelimit scaling reads
#   bash scripts/bench.sh inflight overhead    # just these
#   BENCH_ARGS_overhead="--profile" bash scripts/bench.sh overhead   # extra flags for one benchmark
#
# Starts (or reuses) Redis and Postgres for the benchmarks, runs each benchmark as
# `python -m tests.benchmarks.bench_<name>`, and writes a combined JSON to bench-results.json
# (override with BENCH_RESULTS=path), then prints it. Each benchmark's own log goes to stderr.
# Exit code: 0 if every benchmark ran and passed its target, 1 if any missed, 2 if any crashed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
OUT="${BENCH_RESULTS:-$ROOT/bench-results.json}"
ALL=(inflight overhead submit ratelimit scaling reads liveness)
NAMES=("$@")
[[ ${#NAMES[@]} -eq 0 ]] && NAMES=("${ALL[@]}")

for n in "${NAMES[@]}"; do
    [[ -f "$ROOT/tests/benchmarks/bench_$n.py" ]] || { echo "bench: unknown benchmark '$n' (known: ${ALL[*]})" >&2; exit 2; }
done

# Servers of the benchmarks' own (Redis 56389, Postgres 55439; see tests/benchmarks/common.py:services),
# started once here and reused by every benchmark. LLMBATCH_BENCH_SHARED=1 uses the tests' servers instead.
set -a
eval "$("$PY" -c 'from tests.benchmarks.common import services; r, p = services(); print(f"LLMBATCH_BENCH_REDIS_URL={r}"); print(f"LLMBATCH_BENCH_DATABASE_URL={p}")')" ||
    { echo "bench: could not start the benchmark services" >&2; exit 2; }
set +a

TMP="$(mktemp -d /tmp/llmbatch-bench.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
for n in "${NAMES[@]}"; do
    var="BENCH_ARGS_$n"
    echo "bench: === $n ===" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$PY" -m "tests.benchmarks.bench_$n" --out "$TMP/$n.json" ${!var:-} >"$TMP/$n.stdout" 2>"$TMP/$n.stderr"
    rc=$?
    cat "$TMP/$n.stderr" >>"$TMP/$n.stdout"
    grep -E '^\[bench' "$TMP/$n.stderr" >&2 || true
    if [[ ! -s "$TMP/$n.json" ]]; then
        echo "bench: $n produced no result (exit $rc); its output:" >&2
        tail -n 40 "$TMP/$n.stdout" >&2
        "$PY" -c 'import json,sys; json.dump({"benchmark": sys.argv[1], "error": open(sys.argv[2]).read()[-4000:], "pass": None}, open(sys.argv[3], "w"))' \
            "$n" "$TMP/$n.stdout" "$TMP/$n.json"
    fi
    echo "bench: $n done in $(($(date +%s) - start)) s" >&2
done

"$PY" - "$OUT" "$TMP" "${NAMES[@]}" <<'EOF'
import json, subprocess, sys, time
out, tmp, names = sys.argv[1], sys.argv[2], sys.argv[3:]
results = {n: json.load(open(f"{tmp}/{n}.json")) for n in names}
commit = subprocess.run(["git", "log", "-1", "--format=%h"], capture_output=True, text=True).stdout.strip()
combined = {
    "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "commit": commit,
    "summary": [{k: r.get(k) for k in ("benchmark", "figure", "unit", "baseline", "ratio", "target", "pass")}
                | ({"error": True} if "error" in r else {}) for r in results.values()],
    "results": results,
}
text = json.dumps(combined, indent=2, default=str)
open(out, "w").write(text + "\n")
print(text)
print(f"bench: wrote {out}", file=sys.stderr)
crashed = any("error" in r for r in results.values())
missed = any(r.get("pass") is False for r in results.values())
sys.exit(2 if crashed else 1 if missed else 0)
EOF
