"""The lean `status` reads the store URL from the same sources as load_settings(), with the same result (or
hands over to the full path where load_settings refuses the configuration), and knows the newest migration."""

from __future__ import annotations

import os

import pytest

from llmbatch import status_reader as lean
from llmbatch.config import DEFAULT_DATABASE_URL, Settings, load_settings
from llmbatch.errors import ConfigError


def test_it_knows_every_setting_and_the_default_store():
    assert lean.SETTINGS_KEYS == set(Settings.model_fields)
    assert lean.DEFAULT_DATABASE_URL == DEFAULT_DATABASE_URL


def test_it_finds_the_newest_migration_as_alembic_does():
    from alembic.script import ScriptDirectory

    from llmbatch.store.db import _alembic_config

    assert lean.head_revision_from_files() == ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


PG = "postgresql://u:p%40ss@db.example:5433/jobs"
CASES = {
    "nothing": ({}, None),
    "env": ({"LLMBATCH_DATABASE_URL": PG}, None),
    "env blank": ({"LLMBATCH_DATABASE_URL": "   "}, None),
    "env padded": ({"LLMBATCH_DATABASE_URL": "  sqlite:///x.db "}, None),
    "env not a url": ({"LLMBATCH_DATABASE_URL": "x.db"}, None),
    "file": ({}, f'database_url = "{PG}"\nconcurrency = 8\n[retry]\nmax_attempts_per_task = 3\n'),
    "file and env": ({"LLMBATCH_DATABASE_URL": "sqlite:///env.db"}, f'database_url = "{PG}"\n'),
    "file, env blank": ({"LLMBATCH_DATABASE_URL": ""}, f'database_url = "{PG}"\n'),
    "file without it": ({}, 'baseline_model = "gpt-4o-mini"\n'),
    "file empty value": ({}, 'database_url = ""\n'),
    "file not a string": ({}, "database_url = 5\n"),
    "file not a url": ({}, 'database_url = "jobs.db"\n'),
    "file bad toml": ({}, "database_url = \n"),
    "file unknown key": ({}, f'databse_url = "{PG}"\n'),
    "file unknown key, env set": ({"LLMBATCH_DATABASE_URL": PG}, "concurency = 3\n"),
    "env misspelt": ({"LLMBATCH_DATABSE_URL": PG}, None),
    "env table name": ({"LLMBATCH_RETRY": "3"}, None),
    "env tooling": ({"LLMBATCH_TEST_DATABASE_URL": PG, "LLMBATCH_PG_PORT": "5"}, None),
}


@pytest.mark.parametrize(
    ("case", "where"),
    [
        (c, w)
        for c, (_, toml) in CASES.items()
        for w in ("./llmbatch.toml", "LLMBATCH_CONFIG")[: 1 + (toml is not None)]
    ],
)
def test_the_store_url_is_the_one_load_settings_gives(case, where, tmp_path, monkeypatch):
    env, toml = CASES[case]
    for k in [k for k in os.environ if k.startswith("LLMBATCH_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    if toml is not None:
        cfg = tmp_path / ("llmbatch.toml" if where == "./llmbatch.toml" else "elsewhere.toml")
        cfg.write_text(toml)
        if where == "LLMBATCH_CONFIG":
            monkeypatch.setenv("LLMBATCH_CONFIG", str(cfg))
    try:
        want = load_settings().database_url
    except ConfigError:
        with pytest.raises(lean.Fallback):  # the full path runs and reports the error
            lean.database_url()
    else:
        assert lean.database_url() == want


def test_a_config_file_that_is_not_there_hands_over(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBATCH_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError):
        load_settings()
    with pytest.raises(lean.Fallback):
        lean.database_url()
