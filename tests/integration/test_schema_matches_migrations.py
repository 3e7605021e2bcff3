"""The migrations build exactly the tables the code declares (store/schema.py), on SQLite and Postgres: a
column, index or type added to one and not the other fails here, not in production."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from llmbatch.store.db import get_engine
from llmbatch.store.schema import metadata

pytestmark = pytest.mark.integration

# SQLite does not enforce VARCHAR lengths, so migration 0007 widens these two columns on Postgres only.
SQLITE_ONLY_WIDTHS = {("attempts", "budget_window"), ("budget_windows", "window")}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_migrated_store_has_exactly_the_declared_schema(kind, request):
    url = request.getfixturevalue("sqlite_url" if kind == "sqlite" else "fresh_postgres_url")
    with get_engine(url).connect() as conn:  # get_engine migrates to the head
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    if kind == "sqlite":
        diff = [
            d
            for d in diff
            if not (isinstance(d, list) and d[0][0] == "modify_type" and (d[0][2], d[0][3]) in SQLITE_ONLY_WIDTHS)
        ]
    assert diff == []
