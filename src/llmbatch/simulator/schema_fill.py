"""Build a JSON value that is valid against a JSON Schema, taking values from a text where that is easy.

Covers what extraction schemas use: object/properties/required, string (with enum, const, formats,
length bounds), number/integer (with bounds), boolean, null, array (items, min/maxItems), anyOf/oneOf/
allOf, local $ref. Gemini's OpenAPI-style upper-case types ("OBJECT", "STRING") are accepted too.
`pattern` is not solved: a string with a pattern gets a value taken from the text, which may not match.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MAX_DEPTH = 12
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_CAPITALISED_RUN = re.compile(r"\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+)+)\b")
_CAPITALISED = re.compile(r"(?<![.!?]\s)\b([A-Z][a-z]{2,})\b")
_WORDS = re.compile(r"\S+")
_NAME_KEYS = (
    "name",
    "person",
    "author",
    "customer",
    "company",
    "organization",
    "organisation",
    "vendor",
    "title",
    "brand",
    "product",
    "city",
    "country",
    "location",
    "place",
)
_OPENERS = {
    "Contact",
    "Dear",
    "Hi",
    "Hello",
    "Please",
    "The",
    "Our",
    "Call",
    "Email",
    "Ask",
    "Meet",
    "From",
    "To",
    "Attn",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
    "Customer",
    "Client",
    "Name",
    "Invoice",
    "Order",
    "Thanks",
}
_TRUE = {"yes", "true", "y"}


def _bound(schema: dict, key: str) -> float | None:
    v = schema.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def fill(schema: Any, text: str) -> Any:
    return _Filler(schema if isinstance(schema, dict) else {}, text).value(schema, "", 0, 0)


class _Filler:
    def __init__(self, root: dict, text: str):
        self.root = root
        self.text = text

    def _resolve(self, schema: Any) -> dict:
        seen = 0
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
            ref = schema["$ref"]
            if not ref.startswith("#"):
                return {k: v for k, v in schema.items() if k != "$ref"}
            node: Any = self.root
            for part in ref.lstrip("#").strip("/").split("/"):
                if not part:
                    continue
                part = part.replace("~1", "/").replace("~0", "~")
                node = node.get(part) if isinstance(node, dict) else None
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**(node if isinstance(node, dict) else {}), **rest}
            seen += 1
        return schema if isinstance(schema, dict) else {}

    @staticmethod
    def _type(schema: dict) -> str:
        t = schema.get("type")
        if isinstance(t, list):
            non_null = [x for x in t if str(x).lower() != "null"]
            t = non_null[0] if non_null else "null"
        if isinstance(t, str):
            return t.lower()
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema:
            return "array"
        return "string"

    def value(self, schema: Any, name: str, depth: int, index: int) -> Any:
        schema = self._resolve(schema)
        if depth > _MAX_DEPTH:
            return None
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._enum(schema["enum"], index)
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                non_null = [b for b in branches if self._type(self._resolve(b)) != "null"]
                return self.value((non_null or branches)[0], name, depth + 1, index)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part)
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged["required"] = list(merged.get("required", [])) + list(part.get("required", []))
                for k, v in part.items():
                    if k not in ("properties", "required"):
                        merged.setdefault(k, v)
            return self.value(merged, name, depth + 1, index)
        kind = self._type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind in ("number", "integer"):
            return self._number(schema, name, integer=kind == "integer")
        if kind == "boolean":
            return self._boolean(name)
        if kind == "null":
            return None
        return self._string(schema, name, index)

    def _enum(self, options: list, index: int) -> Any:
        for opt in options:
            if isinstance(opt, str) and opt and re.search(rf"\b{re.escape(opt)}\b", self.text, re.IGNORECASE):
                return opt
        return options[index % len(options)]

    def _object(self, schema: dict, depth: int) -> dict:
        props = schema.get("properties")
        if not isinstance(props, dict):
            props = {}
        out = {key: self.value(sub, key, depth + 1, 0) for key, sub in props.items()}
        for key in schema.get("required", []) or []:
            if key not in out:
                out[key] = self.value(
                    schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else {},
                    key,
                    depth + 1,
                    0,
                )
        return out

    def _array(self, schema: dict, name: str, depth: int) -> list:
        lo = schema.get("minItems", 1)
        hi = schema.get("maxItems")
        n = max(int(lo) if isinstance(lo, int) else 1, 1)
        if isinstance(hi, int):
            n = min(n, hi)
        items = schema.get("items")
        if not isinstance(items, dict):
            items = {}
        return [self.value(items, name, depth + 1, i) for i in range(n)]

    def _near(self, name: str, pattern: str) -> re.Match | None:
        """`name: value` / `name is value` / `name = value` in the text."""
        if not name:
            return None
        key = re.escape(name).replace("_", "[ _-]?")
        return re.search(rf"\b{key}\b\s*(?::|=|is|was|of)?\s*{pattern}", self.text, re.IGNORECASE)

    def _number(self, schema: dict, name: str, *, integer: bool) -> int | float:
        m = self._near(name, r"\$?(-?\d+(?:\.\d+)?)")
        raw = m.group(1) if m else None
        if raw is None:
            any_num = _NUMBER.search(self.text)
            raw = any_num.group(0).replace(",", ".") if any_num else "0"
        value: float = float(raw)
        if integer:
            value = math.floor(value)
        lo, hi = _bound(schema, "minimum"), _bound(schema, "maximum")
        xlo, xhi = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
        if lo is not None and value < lo:
            value = math.ceil(lo) if integer else lo
        if xlo is not None and value <= xlo:
            value = math.floor(xlo) + 1 if integer else xlo + 0.5 * (1 if xhi is None else min(1, xhi - xlo))
        if hi is not None and value > hi:
            value = math.floor(hi) if integer else hi
        if xhi is not None and value >= xhi:
            value = math.ceil(xhi) - 1 if integer else xhi - 0.5 * (1 if xlo is None else min(1, xhi - xlo))
        return int(value) if integer else value

    def _boolean(self, name: str) -> bool:
        m = self._near(name, r"(yes|no|true|false|y|n|none)\b")
        if m:
            return m.group(1).lower() in _TRUE
        return False

    def _string(self, schema: dict, name: str, index: int) -> str:
        fmt = str(schema.get("format", "")).lower()
        lname = name.lower()
        value = None
        if fmt == "email" or "email" in lname:
            value = self._first(_EMAIL, "contact@example.com")
        elif fmt in ("uri", "url") or lname in ("url", "website", "link", "homepage"):
            value = self._first(_URL, "https://example.com")
        elif fmt == "date" or (not fmt and "date" in lname):
            value = self._first(_DATE, "2024-01-01")
        elif fmt == "date-time":
            d = _DATE.search(self.text)
            value = (d.group(0) if d else "2024-01-01") + "T00:00:00Z"
        elif fmt == "uuid":
            value = "00000000-0000-4000-8000-000000000000"
        elif "phone" in lname:
            value = self._first(_PHONE, "+1 555 0100")
        if value is None:
            m = self._near(name, r"([^\n,;.]{1,80})")
            if m:
                start = m.start(1)
                value = self.text[start : start + len(m.group(1))].strip()
        if not value and any(k in lname for k in _NAME_KEYS):
            value = self._proper_noun()
        if not value:
            value = " ".join(_WORDS.findall(self.text)[:5]) or (name or "value")
        if index:
            value = f"{value} {index + 1}"
        lo, hi = schema.get("minLength"), schema.get("maxLength")
        if isinstance(hi, int):
            value = value[:hi]
        if isinstance(lo, int) and len(value) < lo:
            value = value + "x" * (lo - len(value))
        return value

    def _proper_noun(self) -> str | None:
        """The first run of capitalised words, without a sentence-opening word like 'Contact' or 'Dear'."""
        for m in _CAPITALISED_RUN.finditer(self.text):
            words = m.group(1).split()
            while words and words[0] in _OPENERS:
                words.pop(0)
            if words:
                return " ".join(words)
        single = _CAPITALISED.search(self.text)
        return single.group(1) if single else None

    def _first(self, pattern: re.Pattern, default: str) -> str:
        m = pattern.search(self.text)
        return m.group(0) if m else default
