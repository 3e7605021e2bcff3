"""CPU per route() call on a realistic mix; with --ref, also routing (module or package) and tokens.py at a git ref, same run.

    .venv/bin/python -m tests.benchmarks.bench_route                       # 20,000 calls, µs per call
    .venv/bin/python -m tests.benchmarks.bench_route --ref main            # + routing.py and tokens.py at main

The mix, over the built-in catalog and every provider credentialed (as when simulating): classify (2 to 6
labels), extract (a schema), summarize (short to long inputs) and chat with a system message, in ASCII text
but 1 task in 10 with non-ASCII words; some tasks carry images, some pin a model or name an allow-list, some
jobs set a min tier, a deny-list or a max cost per task; health holds observed latencies and, from time to
time, a model or provider cooling down. Requests are built before the clock starts (the engine builds them
before routing too). With --ref, every decision of the two implementations is also compared field by field,
and a difference stops the run. The timed passes alternate between the two (the machine's load varies).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
from pathlib import Path

from llmbatch.catalog import builtin_catalog
from llmbatch.models import TaskLine, Tier
from llmbatch.prompts import build_request
from llmbatch import routing

NOW = 1_790_000_000.0
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
    },
}


def make_calls(n: int, seed: int = 7) -> list[tuple]:
    rng = random.Random(seed)
    catalog = builtin_catalog()
    keys = [m.key for m in catalog.by_key()]
    providers = sorted(catalog.providers)
    creds = set(providers)
    latency = {k: rng.choice([120.0, 300.0, 800.0]) for k in keys if rng.random() < 0.8}
    calls = []
    for i in range(n):
        kind = rng.choices(["classify", "extract", "summarize", "chat"], [40, 25, 25, 10])[0]
        words = rng.choice([5, 40, 200, 1_000, 6_000])
        vocab = ["alpha", "beta", "gamma", "données", "δ"] if rng.random() < 0.1 else ["alpha", "beta", "gamma"]
        text = " ".join(rng.choice(vocab) for _ in range(words))
        fields: dict = {"id": f"t{i}", "task": kind}
        if kind == "chat":
            fields["messages"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
        else:
            fields["input"] = text
            if rng.random() < 0.1:
                fields["images"] = ["https://example.com/a.png"] * rng.randint(1, 3)
        if kind == "classify":
            fields["labels"] = rng.sample(["pos", "neg", "neutral", "mixed", "spam", "other"], rng.randint(2, 6))
        if kind == "extract":
            fields["schema"] = SCHEMA
        if rng.random() < 0.2:
            fields["max_output_tokens"] = rng.choice([64, 1_000, 8_000])
        r = rng.random()
        if r < 0.05:
            fields["model"] = rng.choice(keys)
        elif r < 0.10:
            fields["models"] = rng.sample(keys, rng.randint(1, 4))
        if rng.random() < 0.1:
            fields["min_tier"] = rng.choice(list(Tier))
        task = TaskLine(**fields)
        job = i // 1_000  # job-level settings change every 1,000 tasks
        jrng = random.Random(job)
        deny = frozenset(jrng.sample(keys, 1)) if jrng.random() < 0.3 else frozenset()
        max_cost = jrng.choice([None, None, 20_000_000, 2_000_000_000])
        job_min_tier = jrng.choice([None, None, Tier.standard])
        cooldown = {}
        if i % 500 < 100:  # a 429 now and then: a model or a whole provider cools down for a while
            cooldown[jrng.choice(keys + providers)] = NOW + i + 30
        health = routing.Health(cooldown_until=cooldown, latency_ms=latency)
        kwargs = dict(
            credentials=creds,
            health=health,
            deny=deny,
            job_min_tier=job_min_tier,
            max_cost_per_task_picos=max_cost,
            now=NOW + i,
        )
        calls.append((task, build_request(task), catalog, kwargs))
    return calls


REF_MODULES = ("tokens", "routing")  # what a route() call runs besides the catalog's own methods


def load_ref(ref: str) -> types.ModuleType:
    """routing.py and tokens.py as they are at `ref`, imported as llmbatch._ref.routing / .tokens; every other
    module they import is the current one."""
    root = Path(__file__).resolve().parents[2]
    pkg = types.ModuleType("llmbatch._ref")
    pkg.__path__ = []
    sys.modules[pkg.__name__] = pkg
    for name, mod in list(sys.modules.items()):
        if name.startswith("llmbatch.") and not name.startswith("llmbatch._ref"):
            sys.modules.setdefault("llmbatch._ref." + name.removeprefix("llmbatch."), mod)
    for name in REF_MODULES:
        src = _git_show(root, ref, f"src/llmbatch/{name}.py")
        if src is not None:
            _exec_module(f"llmbatch._ref.{name}", "llmbatch._ref", src, f"{ref}:{name}.py")
        else:  # a package at that ref (routing/ since it was split): its modules first, then its __init__
            _load_ref_package(root, ref, name)
    return sys.modules["llmbatch._ref.routing"]


def _git_show(root: Path, ref: str, path: str) -> str | None:
    p = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None


def _exec_module(name: str, package: str, src: str, where: str, path: list[str] | None = None) -> None:
    mod = types.ModuleType(name)
    mod.__package__ = package
    if path is not None:
        mod.__path__ = path
    sys.modules[name] = mod
    try:
        exec(compile(src, where, "exec"), mod.__dict__)
    except ImportError:
        del sys.modules[name]
        raise


def _load_ref_package(root: Path, ref: str, name: str) -> None:
    listing = subprocess.run(
        ["git", "ls-tree", "--name-only", ref, f"src/llmbatch/{name}/"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    pkg = f"llmbatch._ref.{name}"
    for stale in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:  # the current ones, aliased above
        del sys.modules[stale]
    subs = [Path(p).stem for p in listing if p.endswith(".py") and not p.endswith("__init__.py")]
    while subs:  # in an order their imports of each other allow
        loaded = []
        for sub in subs:
            try:
                _exec_module(
                    f"{pkg}.{sub}",
                    pkg,
                    _git_show(root, ref, f"src/llmbatch/{name}/{sub}.py") or "",
                    f"{ref}:{name}/{sub}.py",
                )
                loaded.append(sub)
            except ImportError:
                continue
        if not loaded:
            raise ImportError(f"cannot load {name}/ at {ref}: {subs}")
        subs = [s for s in subs if s not in loaded]
    init = _git_show(root, ref, f"src/llmbatch/{name}/__init__.py") or ""
    _exec_module(pkg, pkg, init, f"{ref}:{name}/__init__.py", path=[])


def time_calls(route, calls) -> float:
    """µs of CPU per call."""
    t0 = time.process_time()
    for task, request, catalog, kwargs in calls:
        route(task, request, catalog, **kwargs)
    return (time.process_time() - t0) / len(calls) * 1e6


def summary(d) -> tuple:
    cands = tuple(
        (
            c.model.key,
            c.estimated_picos,
            c.upper_bound_picos,
            c.input_tokens_est,
            c.input_tokens_upper,
            c.output_tokens_est,
            c.completion_cap,
            c.first,
            c.cheapest_picos,
            c.notes,
            c.reason,
        )
        for c in d.candidates
    )
    rej = tuple((r.model.key, r.reason, r.estimated_picos, r.rule) for r in d.rejected)
    return cands, rej, d.warnings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3, help="timed passes per implementation (the best is shown)")
    ap.add_argument("--ref", help="git ref whose routing.py and tokens.py are timed too (e.g. main)")
    args = ap.parse_args()
    calls = make_calls(args.calls)
    impls = {"current": routing.route}
    if args.ref:
        ref_route = load_ref(args.ref).route
        for task, request, catalog, kwargs in calls:
            a = summary(routing.route(task, request, catalog, **kwargs))
            b = summary(ref_route(task, request, catalog, **kwargs))
            if a != b:
                sys.exit(f"decisions differ on task {task.id}:\n current {a}\n {args.ref} {b}")
        print(f"{len(calls):,} decisions identical to {args.ref}'s")
        impls[args.ref] = ref_route
    best = {name: float("inf") for name in impls}
    for _ in range(args.rounds):  # interleaved, so a burst of load on the shared machine hits both
        for name, fn in impls.items():
            best[name] = min(best[name], time_calls(fn, calls))
    n_cands = sum(len(routing.route(t, r, c, **kw).candidates) for t, r, c, kw in calls) / len(calls)
    print(f"{len(calls):,} route() calls, {len(calls[0][2])} catalog models, {n_cands:.1f} candidates per call")
    for name, us in best.items():
        print(f"  {name:>10}: {us:7.1f} µs CPU per call (best of {args.rounds})")
    if args.ref:
        print(f"  speed-up: {best[args.ref] / best['current']:.2f}x")


if __name__ == "__main__":
    main()
