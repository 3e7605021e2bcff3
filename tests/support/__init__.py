"""What the tests and the benchmarks share (conftest's fixtures are built from it):

- `services`: the throwaway Redis and PostgreSQL servers (start/stop/status/restart, also the command line
  behind `scripts/services.sh`), URL helpers, and `SessionServices` (what a test session starts and stops);
- `databases`: a temporary PostgreSQL database (pytest-postgresql's DatabaseJanitor), a flushed Redis database;
- `procs`: `llmbatch worker` processes (`WorkerProcs`), stopping a child process;
- `jobs`: polling a job in the store until it is terminal or far enough along, and the ledger invariants;
- `cli`: running the CLI as a subprocess, its environment, input files, a job written straight to the store;
- `ci`: under CI=true a test that cannot get its services fails instead of skipping.

Why the servers are not pytest-redis's `redis_proc` / pytest-postgresql's `postgresql_proc` (both tried):
- `postgresql_proc` runs `pg_ctl initdb` as the current user, and CI runs as root, which PostgreSQL refuses
  ("initdb: cannot be run as root"). Its only knob is the pg_ctl path; a wrapper that switches user would also
  need a data directory outside pytest's root-only basetemp: not a supported way.
- `redis_proc` starts, but its server lives only for one pytest session on a random port (mirakuru ends it at
  exit). The workflow needs servers that outlive a session (LLMBATCH_KEEP_SERVICES=1, parallel sessions on
  per-port servers, `scripts/bench.sh` outside pytest) and that the reliability tests can crash and restart
  by port (`services.sh restart-redis --kill`, `restart-postgres --immediate`).
So `services` starts both from the installed binaries (as the `postgres` user when root), standard library
only, so that `scripts/services.sh` can run it before any virtualenv exists. Keep this package's
`__init__` free of imports for the same reason.
"""
