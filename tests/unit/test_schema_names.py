"""Every column of the store's tables is named by a plain str: row mappings carry the names as their keys, and
orjson (every JSON the CLI and the service print) refuses a str subclass such as SQLAlchemy's quoted_name."""

from __future__ import annotations

from llmbatch.money import dumps_json
from llmbatch.store.schema import metadata


def test_column_names_and_keys_are_plain_str():
    odd = [
        (t.name, c.name)
        for t in metadata.tables.values()
        for c in t.columns
        if type(c.name) is not str or type(c.key) is not str
    ]
    assert odd == []


def test_a_row_shaped_dict_of_any_table_dumps_as_json():
    for t in metadata.tables.values():
        assert dumps_json({c.key: None for c in t.columns})
