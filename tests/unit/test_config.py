"""Settings: one validated model for llmbatch.toml and LLMBATCH_*; every problem one line naming the key."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from llmbatch.config import RetryPolicy, Settings, load_settings
from llmbatch.errors import ConfigError


@pytest.fixture
def toml(tmp_path, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("LLMBATCH_"):
            monkeypatch.delenv(k)
    path = tmp_path / "llmbatch.toml"
    monkeypatch.setenv("LLMBATCH_CONFIG", str(path))

    def write(text: str):
        path.write_text(text)
        return path

    return write


def test_defaults_are_written_once_and_read_back(toml):
    toml("")
    s = load_settings()
    assert s == Settings()
    assert s.concurrency == 64 and s.chunk_size == 50 and s.retry == RetryPolicy()
    assert s.retry.max_attempts_per_model == 4 and s.rate_limits == {} and s.daily_cap_usd is None


def test_precedence_arguments_over_environment_over_file(toml, monkeypatch):
    toml(
        'concurrency = 8\nchunk_size = 7\ndaily_cap_usd = "2.50"\n[retry]\nmax_attempts_per_model = 2\n'
        '[rate_limits."openai/gpt-4o"]\nrpm = 100\n'
    )
    monkeypatch.setenv("LLMBATCH_CONCURRENCY", "9")
    s = load_settings(chunk_size=3)
    assert (s.concurrency, s.chunk_size, s.daily_cap_usd) == (9, 3, Decimal("2.50"))
    assert s.retry.max_attempts_per_model == 2 and s.rate_limits["openai/gpt-4o"].rpm == 100


@pytest.mark.parametrize(
    "text, expected",
    [
        ("daily_cap_us = 5\n", "unknown key 'daily_cap_us' (did you mean 'daily_cap_usd'?)"),
        (
            "[retry]\nmax_atempts_per_model = 3\n",
            "[retry].max_atempts_per_model (did you mean 'max_attempts_per_model'?)",
        ),
        ('[rate_limits."a/b"]\nrpn = 3\n', "(did you mean 'rpm'?)"),
        ('concurrency = "lots"\n', "concurrency: Input should be a valid integer"),
        ("concurrency = 0\n", "concurrency: Input should be greater than or equal to 1"),
        ("chunk_size = 0\n", "chunk_size"),
        ('daily_cap_usd = "nan"\n', "daily_cap_usd: Input should be a finite number"),
        ("daily_cap_usd = -1\n", "daily_cap_usd: Input should be greater than or equal to 0"),
        ('lease_seconds = "inf"\n', "lease_seconds"),
        ('database_url = "llmbatch.db"\n', "database_url: not a URL"),
        ('broker_url = "localhost:6379"\n', "broker_url: not a URL"),
        ('[rate_limits."a/b"]\nrpm = 0\n', '"a/b".rpm must be >= 1'),
        ("[retry]\nbase_delay_s = -1\n", "retry.base_delay_s"),
        ("concurrency = \n", "invalid TOML"),
    ],
)
def test_bad_file_values_are_one_line_naming_the_key(toml, text, expected):
    path = toml(text)
    with pytest.raises(ConfigError) as e:
        load_settings()
    msg = str(e.value)
    assert expected in msg and str(path) in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    "var, value, expected",
    [
        ("LLMBATCH_CONCURRENCY", "0", "LLMBATCH_CONCURRENCY: Input should be greater than or equal to 1 (got '0')"),
        ("LLMBATCH_CONCURRENCY", "lots", "LLMBATCH_CONCURRENCY: Input should be a valid integer"),
        ("LLMBATCH_DAILY_CAP_USD", "NaN", "LLMBATCH_DAILY_CAP_USD: Input should be a finite number"),
        ("LLMBATCH_SHUTDOWN_GRACE_S", "-1", "LLMBATCH_SHUTDOWN_GRACE_S"),
        ("LLMBATCH_BROKER_URL", "nonsense", "LLMBATCH_BROKER_URL: not a URL"),
    ],
)
def test_bad_environment_values_name_the_variable(toml, monkeypatch, var, value, expected):
    toml("")
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=None) as e:
        load_settings()
    assert expected in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("var", "expected"),
    [
        ("LLMBATCH_CONCURENCY", "LLMBATCH_CONCURENCY: unknown setting (did you mean LLMBATCH_CONCURRENCY?)"),
        ("LLMBATCH_DATABSE_URL", "LLMBATCH_DATABSE_URL: unknown setting (did you mean LLMBATCH_DATABASE_URL?)"),
        ("LLMBATCH_RETRY", "LLMBATCH_RETRY: unknown setting"),  # tables come from the file only
        ("LLMBATCH_XYZZY", "LLMBATCH_XYZZY: unknown setting (no setting has that name"),
    ],
)
def test_a_misspelt_environment_variable_is_named_not_ignored(toml, monkeypatch, var, expected):
    toml("")
    monkeypatch.setenv(var, "4")
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(e.value).startswith(expected), str(e.value)


def test_the_tooling_variables_under_the_prefix_are_not_settings_and_not_errors(toml, monkeypatch):
    toml("")
    for var in ("LLMBATCH_TEST_REDIS_URL", "LLMBATCH_BENCH_SHARED", "LLMBATCH_KEEP_SERVICES", "LLMBATCH_PG_PORT"):
        monkeypatch.setenv(var, "1")
    assert load_settings().concurrency == Settings().concurrency


def test_bad_arguments_name_the_option(toml):
    toml("")
    with pytest.raises(ConfigError, match="--concurrency: Input should be greater than or equal to 1"):
        load_settings(concurrency=-3)
    with pytest.raises(ConfigError, match="unknown setting 'concurency'.*'concurrency'"):
        load_settings(concurency=3)


def test_missing_config_file_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMBATCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml, which is not a file"):
        load_settings()


def test_settings_are_frozen():
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.concurrency = 5  # type: ignore[misc]
