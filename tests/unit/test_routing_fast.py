"""route()'s precomputed per-model table against a straightforward per-model computation.

route() reads each model's rates and token constants once per request shape (routing.rules._Fit) and builds its
Candidates and Rejections without the dataclass __init__. `reference_route` below is the plain form of the
same rules: every model priced through catalog.pricing's estimate_picos / upper_bound_picos (the tier lookup
and the dearest-tier bound done by ModelInfo.rates / dearest_rates), objects built by their constructors. The
two must agree exactly on random catalogs (several long-context tiers, tiers that get cheaper, cache-write
prices above the input price, image-token quirks, reasoning budgets) and on the builtin catalog: same
candidates in the same order with the same figures, same rejections, same warnings.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone

import pytest

from llmbatch.catalog import Catalog, ModelInfo, ProviderInfo, builtin_catalog
from llmbatch.catalog.pricing import estimate_picos, upper_bound_picos
from llmbatch.models import DEFAULT_MIN_TIER, TaskLine, Tier
from llmbatch.money import exact_usd
from llmbatch.prompts import build_request
from llmbatch.routing import Candidate, Health, Rejection, RouteDecision, route
from llmbatch.routing.rules import (
    _adaptations,
    _check_static,
    _cooling_left,
    _names,
    _resolve_pin,
    _Shape,
    _status_note,
    _utc_date,
)
from llmbatch.tokens import IMAGE_TOKENS_MAX, IMAGE_TOKENS_TYPICAL, expected_output_tokens, measure_input

NOW = 1_800_000_000.0
PROVIDERS = ["p1", "p2", "p3"]
PRICES = ["0", "0.05", "0.15", "1", "2.5", "15"]


def reference_route(task, request, catalog, *, credentials, health, deny, job_min_tier, max_cost, now):
    """The rules as the routing package's docstring states them, one model at a time, nothing precomputed."""
    today = datetime.fromtimestamp(now, tz=timezone.utc).date()
    min_tier = task.min_tier or job_min_tier or DEFAULT_MIN_TIER[task.task]
    msgs = request.messages
    size = measure_input(msgs, json_schema=request.json_schema)
    out_visible = expected_output_tokens(
        task.task, request.max_output_tokens, size.text_est, task.labels, json_schema=request.json_schema
    )
    system = any(m.get("role") in ("system", "developer") for m in msgs)
    shape = _Shape(
        size.images > 0, system, bool(request.json_schema), request.max_output_tokens, request.temperature is not None
    )
    warnings, pinned_keys, allow = [], None, None
    if task.model:
        pinned_keys = allow = _resolve_pin(task.model, catalog)
        if not pinned_keys:
            warnings.append(f"pinned model {task.model!r} is not in the catalog; `llmbatch models` lists it")
    elif task.models:
        allow = frozenset(task.models)
        for entry in task.models:
            if not any(entry in _names(m) for m in catalog):
                warnings.append(f"allow-list entry {entry!r} matches no model in the catalog")

    eligible, cooling, rejected = [], [], []
    for model in catalog.by_key():
        pinned = pinned_keys is not None and model.key in pinned_keys
        failed = _check_static(
            model,
            shape,
            pinned=pinned,
            allow=allow,
            deny=frozenset(deny),
            credentials=frozenset(credentials),
            catalog=catalog,
            min_tier=min_tier,
            today=today,
        )
        if failed:
            rejected.append(Rejection(model, failed[1], None, failed[0]))
            continue
        img_typ = int(model.quirks.get("image_tokens", IMAGE_TOKENS_TYPICAL))
        img_max = max(int(model.quirks.get("image_tokens_max", IMAGE_TOKENS_MAX)), img_typ)
        in_est = size.text_est + size.images * img_typ
        in_upper = size.text_upper + size.images * img_max
        cap = request.max_output_tokens
        if model.reasoning:
            cap += request.reasoning_budget_tokens or model.reasoning_budget_tokens
        cap = min(cap, model.max_output_tokens)
        out_est = min(out_visible + (model.expected_reasoning_tokens if model.reasoning else 0), cap)
        picos = estimate_picos(model, in_est, out_est)
        if in_est + cap > model.context_window:
            reason = f"context {model.context_window:,} < {in_est + cap:,} needed"
            rejected.append(Rejection(model, reason, None, "context"))
            continue
        if max_cost is not None and picos > max_cost:
            reason = f"est {exact_usd(picos)} > max cost per task {exact_usd(max_cost)}"
            rejected.append(Rejection(model, reason, picos, "max_cost"))
            continue
        figures = (picos, upper_bound_picos(model, in_upper, cap), in_est, in_upper, out_est, cap)
        notes = _adaptations(model, shape)
        left = _cooling_left(health, model, now)
        if left is not None:
            cooling.append((model, figures, notes, left))
            continue
        eligible.append((model, figures, notes))
        if pinned and model.status_on(today) != "active":
            warnings.append(f"pinned model {model.key} is {_status_note(model, today)}; it may stop working")
        if pinned and model.tier.rank < min_tier.rank:
            warnings.append(
                f"pinned model {model.key} is tier {model.tier.value}, below the {min_tier.value} asked for"
            )
    if not eligible and cooling:
        soonest = min(left for *_, left in cooling)
        warnings.append(f"every eligible model is cooling down; the first is free again in {soonest:.0f} s")
        eligible = [(m, f, n) for m, f, n, _ in cooling]
    else:
        rejected += [Rejection(m, f"cooling down {left:.0f} s", f[0], "cooldown") for m, f, _, left in cooling]
    eligible.sort(key=lambda mfn: (mfn[1][0], health.latency_ms.get(mfn[0].key, float("inf")), mfn[0].key))
    cheapest = eligible[0][1][0] if eligible else 0
    candidates = tuple(Candidate(m, *f, i == 0, cheapest, n) for i, (m, f, n) in enumerate(eligible))
    rejected.sort(key=lambda r: r.model.key)
    return RouteDecision(candidates, tuple(rejected), tuple(warnings))


def assert_same(task, catalog, creds, health, deny, job_min_tier, max_cost, reasoning_budget=0, now=NOW):
    request = build_request(task)
    if reasoning_budget:
        request = request.model_copy(update={"reasoning_budget_tokens": reasoning_budget})
    kw = dict(credentials=creds, health=health, deny=deny, job_min_tier=job_min_tier, now=now)
    got = route(task, request, catalog, max_cost_per_task_picos=max_cost, **kw)
    want = reference_route(task, request, catalog, max_cost=max_cost, **kw)
    assert got == want  # every field of every candidate and rejection, in order, and the warnings
    assert [c.reason for c in got.candidates] == [c.reason for c in want.candidates]
    for obj in (*got.candidates, *got.rejected):  # built without __init__: exactly the dataclass's fields
        assert list(vars(obj)) == [f.name for f in dataclasses.fields(obj)]
    return got


def random_model(rng: random.Random, index: int) -> ModelInfo:
    reasoning = rng.random() < 0.4
    quirks = {}
    if rng.random() < 0.5:
        quirks["image_tokens"] = rng.choice([85, 765, 2_000])
    if rng.random() < 0.5:
        quirks["image_tokens_max"] = rng.choice([500, 1_600, 3_000])  # may be below image_tokens
    tiers = [
        {
            "above_input_tokens": above,
            "input_per_mtok": rng.choice(PRICES),  # a tier may be cheaper than the one below
            "output_per_mtok": rng.choice(PRICES),
            "cache_write_per_mtok": rng.choice([None, "3", "40"]),  # above input: the bound's input rate
            "cached_input_per_mtok": rng.choice([None, "0.01"]),
        }
        for above in sorted(rng.sample([300, 1_000, 2_500, 6_000, 20_000], rng.choice([0, 0, 1, 2, 3])))
    ]
    return ModelInfo(
        provider=rng.choice(PROVIDERS),
        model=f"m{index}",
        api="openai",
        tier=rng.choice(list(Tier)),
        reasoning=reasoning,
        input_per_mtok=rng.choice(PRICES),
        output_per_mtok=rng.choice(PRICES),
        cache_write_per_mtok=rng.choice([None, "0.3", "20"]),
        context_window=rng.choice([2_000, 8_192, 128_000, 1_000_000]),
        max_output_tokens=rng.choice([64, 4_096, 32_768]),
        capabilities={c for c in ("vision", "json_schema", "system_role", "temperature") if rng.random() < 0.85},
        quirks=quirks,
        price_tiers=tiers,
        status=rng.choice(["active"] * 6 + ["deprecated", "retired"]),
        expected_reasoning_tokens=rng.choice([0, 300]) if reasoning else 0,
        reasoning_budget_tokens=rng.choice([0, 2_000]) if reasoning else 0,
    )


def random_scenario(rng: random.Random) -> tuple:
    ms = [random_model(rng, i) for i in range(rng.randint(1, 8))]
    provs = [
        ProviderInfo(name=p, api="openai", base_url="http://127.0.0.1:1/v1", key_env=f"{p}_KEY") for p in PROVIDERS
    ]
    catalog = Catalog(ms, provs)
    keys = [m.key for m in ms]
    kind = rng.choice(["summarize", "classify", "extract", "chat"])
    # sizes spread so that the expected input and its upper bound (~4x for ASCII) straddle the tier thresholds
    text = rng.choice(["word ", "mot é ", "語"]) * rng.randint(1, 6_000)
    fields: dict = {"id": "t", "task": kind}
    if kind == "chat":
        system = [{"role": "system", "content": "be brief"}] if rng.random() < 0.5 else []
        fields["messages"] = system + [{"role": "user", "content": text}]
    else:
        fields["input"] = text
        if rng.random() < 0.25:
            fields["images"] = ["https://example.com/a.png"] * rng.randint(1, 3)
    if kind == "classify":
        fields["labels"] = ["yes", "no"]
    if kind == "extract":
        fields["schema"] = {"type": "object", "properties": {"name": {"type": "string"}}}
    fields["max_output_tokens"] = rng.choice([None, 16, 1_000, 20_000])
    fields["temperature"] = rng.choice([None, 0.5])
    fields["min_tier"] = rng.choice([None, None, *Tier])
    pick = rng.choice(["none"] * 3 + ["allow", "pin"])
    if pick == "allow":
        fields["models"] = rng.sample(keys + ["p2", "unknown"], rng.randint(1, 3))
    elif pick == "pin":
        fields["model"] = rng.choice(keys + ["unknown"])
    task = TaskLine(**fields)
    creds = rng.choice([set(PROVIDERS), {"p1", "p2"}])
    cooling = rng.sample(keys + PROVIDERS, rng.choice([0, 0, 1, 2]))
    health = Health(
        cooldown_until={k: rng.choice([NOW - 1, NOW + 30]) for k in cooling},
        latency_ms={k: rng.choice([50.0, 400.0]) for k in keys if rng.random() < 0.5},  # ties for the key
    )
    deny = rng.choice([frozenset(), frozenset(keys[:1]), frozenset({"p3"})])
    job_min_tier = rng.choice([None, None, Tier.standard])
    max_cost = rng.choice([None, None, 0, 10**6, 10**9, "a model's estimate"])
    if max_cost == "a model's estimate":  # the boundary: an estimate equal to the cap is allowed
        d = route(task, build_request(task), catalog, credentials=creds, now=NOW)
        max_cost = rng.choice([c.estimated_picos for c in d.candidates]) if d.candidates else None
    reasoning_budget = rng.choice([0, 0, 500])
    return task, catalog, creds, health, deny, job_min_tier, max_cost, reasoning_budget


def test_route_agrees_with_the_per_model_reference_on_random_catalogs():
    for seed in range(1_000):
        try:
            assert_same(*random_scenario(random.Random(seed)))
        except AssertionError as e:
            raise AssertionError(f"seed {seed}: {e}") from e


def test_route_agrees_with_the_reference_on_the_builtin_catalog():
    """Every task kind, with images, pins, allow-lists, a max cost and cooldowns, on the shipped models (long
    context tiers, image quirks, reasoning models, deprecated ones)."""
    catalog = builtin_catalog()
    keys = [m.key for m in catalog.by_key()]
    creds = set(catalog.providers)
    latency = {k: float(50 * (i % 4)) for i, k in enumerate(keys)}
    seen_tiers = 0
    for i in range(120):
        kind = ["classify", "extract", "summarize", "chat"][i % 4]
        # the upper bound (bytes) of the 30,000 and 45,000-word inputs crosses a long-context threshold (128k or
        # 200k tokens) and their expected count does not; that of the 170,000-word ones crosses it too
        text = ("word " if i % 3 else "café ") * [3, 40, 2_000, 30_000, 45_000, 170_000][i % 6]
        fields: dict = {"id": f"t{i}", "task": kind, "input": text}
        if kind == "chat":
            fields = {
                "id": f"t{i}",
                "task": kind,
                "messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": text}],
            }
        elif i % 5 == 0:
            fields["images"] = ["https://example.com/a.png"] * (1 + i % 3)
        if kind == "classify":
            fields["labels"] = ["positive", "negative", "neutral"]
        if kind == "extract":
            fields["schema"] = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}
        if i % 11 == 0:
            fields["model"] = keys[i % len(keys)]
        elif i % 13 == 0:
            fields["models"] = [keys[i % len(keys)], keys[(i * 3) % len(keys)].split("/")[0]]
        health = Health(cooldown_until={keys[i % len(keys)]: NOW + 10} if i % 7 == 0 else {}, latency_ms=latency)
        max_cost = [None, None, 10**7, 10**9][i % 4]
        d = assert_same(TaskLine(**fields), catalog, creds, health, frozenset(), None, max_cost, now=NOW + i * 97)
        seen_tiers += any(
            c.model.price_tiers and c.input_tokens_upper > c.model.price_tiers[0].above_input_tokens
            for c in d.candidates
        )
    assert seen_tiers  # the long-context tiers were reached


def test_the_remembered_utc_date_is_the_date_fromtimestamp_gives_at_every_instant():
    midnight = datetime(2027, 3, 1, tzinfo=timezone.utc).timestamp()
    offsets = [-86_400.0, -1.0, -0.0015, -0.001, -0.0005, -0.000_000_4, -0.000_000_6, -1e-9, 0.0, 1e-7, 5.0, 86_399.9]
    for t in [midnight + o for o in offsets] + [midnight + o for o in reversed(offsets)] + [0.0, NOW]:
        assert _utc_date(t) == datetime.fromtimestamp(t, tz=timezone.utc).date(), t
    assert _utc_date(midnight) - _utc_date(midnight - 1) == timedelta(days=1)


def test_a_size_routed_again_decides_as_the_reference_whatever_latency_and_cooldowns_do():
    """route() keeps a table per request size seen twice (routing.tables._SizedRoute) and decides later tasks of that
    size from it: the same decision as from scratch while observed latencies reorder equal estimates, a model
    starts or ends cooling down, and the clock moves."""
    for seed in range(300):
        rng = random.Random(10_000 + seed)
        task, catalog, creds, health, deny, job_min_tier, max_cost, budget = random_scenario(rng)
        # every model twice, under two names: equal estimates everywhere, ordered by latency, then key
        twins = [ModelInfo(**{**m.model_dump(), "model": m.model + "b"}) for m in catalog]
        catalog = Catalog([*catalog, *twins], list(catalog.providers.values()))
        keys = [m.key for m in catalog.by_key()]
        for step in range(5):
            if step == 3:
                health.cooldown_until = {rng.choice(keys + PROVIDERS): NOW + 30}
            elif step == 4:
                health.cooldown_until = {}
            health.latency_ms = {k: rng.choice([50.0, 400.0]) for k in keys if rng.random() < 0.6}
            try:
                assert_same(task, catalog, creds, health, deny, job_min_tier, max_cost, budget, now=NOW + step)
            except AssertionError as e:
                raise AssertionError(f"seed {seed}, step {step}: {e}") from e


@pytest.fixture
def fresh_tables(monkeypatch):
    """routing's size tables and their use counts as at a process's start (other tests leave theirs)."""
    from llmbatch.routing import tables

    monkeypatch.setattr(tables, "_SIZED", {})
    monkeypatch.setattr(tables, "_SEEN", {})
    monkeypatch.setattr(tables, "_TABLE_USE", [0, 0, 0])
    return tables


def test_a_size_routed_again_shares_its_decision_objects(fresh_tables):
    catalog = builtin_catalog()
    task = TaskLine(id="t", task="classify", input="is this spam? " * 7, labels=["yes", "no"])
    request = build_request(task)
    kw = dict(credentials=set(catalog.providers), health=Health(), now=NOW)
    first, second, third = (route(task, request, catalog, **kw) for _ in range(3))
    assert first == second == third and len(third.candidates) > 1
    assert third.candidates is route(task, request, catalog, **kw).candidates  # from the table: nothing built


def test_tables_that_are_not_used_stop_being_built_and_come_back_when_sizes_repeat(fresh_tables):
    """A job whose sizes each come twice builds a table per size and never uses one: after the first 64, only
    one size in _SAMPLE gets a table. When sizes start repeating the uses catch up and every size gets one."""
    tables = fresh_tables
    catalog = builtin_catalog()
    kw = dict(credentials=set(catalog.providers), health=Health(), now=NOW)

    def twice(words: int):
        task = TaskLine(id="t", task="classify", input="word " * words, labels=["yes", "no"])
        request = build_request(task)
        return [route(task, request, catalog, **kw) for _ in range(2)]

    for n in range(1, 1001):  # 1,000 sizes, each routed twice: the second sight may build, none is used
        twice(n)
    uses, builds, candidates = tables._TABLE_USE
    assert uses == 0 and candidates == 1000
    assert 64 <= builds <= 64 + 1000 // tables._SAMPLE + 1  # ~120 tables, not 1,000
    for _ in range(40):  # now 50 sizes come 80 times each: the sampled tables are used, builds resume
        for n in range(2051, 2101):
            twice(n)
    uses, builds, _ = tables._TABLE_USE
    assert uses >= builds
    task = TaskLine(id="t", task="classify", input="word " * 2100, labels=["yes", "no"])
    request = build_request(task)
    assert route(task, request, catalog, **kw).candidates is route(task, request, catalog, **kw).candidates
