"""Which LLMBATCH_* environment variables mean something: a misspelt one must not pass silently.

Kept free of heavy imports: the lean `status` path checks the environment too (status_reader.py)."""

from __future__ import annotations

from typing import Iterable, Mapping

ENV_PREFIX = "LLMBATCH_"

# Not settings, but read under the same prefix: where the config file is, and the variables of the test and
# benchmark tooling (tests/support/services.py, scripts/test.sh, scripts/bench.sh, tests/benchmarks).
OTHER_NAMES = frozenset({"CONFIG", "KEEP_SERVICES", "REDIS_PORT", "PG_PORT", "PG_DATA", "PG_DB", "LIFECYCLE_TASKS"})
OTHER_PREFIXES = ("TEST_", "BENCH_")
# Settings that are tables: they come from the config file only, never from the environment.
TABLES = frozenset({"retry", "rate_limits", "providers", "models"})


def unknown_variable(environ: Mapping[str, str], settings: Iterable[str]) -> str | None:
    """One line naming the first LLMBATCH_* variable that is neither a setting (LLMBATCH_<NAME> of a name in
    `settings`) nor one of OTHER_NAMES, with the closest setting; None when there is none."""
    known = {ENV_PREFIX + name.upper() for name in settings}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in known:
            continue
        rest = var[len(ENV_PREFIX) :]
        if rest in OTHER_NAMES or rest.startswith(OTHER_PREFIXES):
            continue
        import difflib  # only when there is something to say: status starts without it

        # Compared without the prefix, which every name shares and which would make any two names look alike.
        close = difflib.get_close_matches(rest, sorted(k[len(ENV_PREFIX) :] for k in known), n=1, cutoff=0.6)
        hint = (
            f"did you mean {ENV_PREFIX}{close[0]}?"
            if close
            else "no setting has that name; see the README's Configuration"
        )
        return f"{var}: unknown setting ({hint}); fix its name or unset it"
    return None
