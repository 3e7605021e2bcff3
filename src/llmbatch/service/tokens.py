"""API tokens of the service: created, listed and revoked from the CLI; stored as SHA-256 hashes.

A token is `lb-` + 32 random bytes (urlsafe): shown once at creation, never stored in clear. Each token owns
the files, batches and jobs it creates; its optional daily cap is held by the ledger's own reservation
(store/ledger/budget.py), so a token over its cap has its batches stop as `budget_exhausted`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from sqlalchemy import Connection, Engine, func, insert, select, update

from ..errors import InputError
from ..money import usd_json, usd_to_picos
from ..store.schema import api_tokens

TOKEN_PREFIX = "lb-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class Token:
    id: str
    name: str
    daily_cap_picos: int | None


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_cap(value: str | None) -> int | None:
    """A --daily-cap in USD -> pico-dollars; InputError for anything else."""
    if value is None:
        return None
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise InputError(f"--daily-cap {value!r} is not a dollar amount; give USD like 25 or 2.50") from None
    if not d.is_finite() or d < 0:
        raise InputError(f"--daily-cap {value!r} must be a dollar amount >= 0")
    return usd_to_picos(str(d))


def create_token(engine: Engine, name: str, *, daily_cap_picos: int | None = None) -> str:
    """Store a new token; returns its secret (the only time it is seen)."""
    if not _NAME.match(name):
        raise InputError(f"token name {name!r}: use letters, digits, '.', '_' or '-' (up to 100 characters)")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        if conn.execute(select(api_tokens.c.id).where(api_tokens.c.name == name)).first():
            raise InputError(f"a token named {name!r} exists; revoke it first or pick another name")
        conn.execute(
            insert(api_tokens).values(
                id="tok_" + secrets.token_hex(8),
                name=name,
                token_hash=hash_token(secret),
                daily_cap_picos=daily_cap_picos,
                created_at=time.time(),
                revoked_at=None,
            )
        )
    return secret


def list_tokens(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(select(api_tokens).order_by(api_tokens.c.created_at)).mappings().all()
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "daily_cap_usd": usd_json(r["daily_cap_picos"]),
            "created_at": r["created_at"],
            "revoked": r["revoked_at"] is not None,
        }
        for r in rows
    ]


def revoke_token(engine: Engine, name: str) -> None:
    with engine.begin() as conn:
        n = conn.execute(
            update(api_tokens)
            .where(api_tokens.c.name == name, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        ).rowcount
    if not n:
        raise InputError(f"no active token named {name!r}; `llmbatch tokens list` shows them")


def any_active(conn: Connection) -> bool:
    return bool(
        conn.execute(select(func.count()).select_from(api_tokens).where(api_tokens.c.revoked_at.is_(None))).scalar()
    )


def authenticate(conn: Connection, secret: str) -> Token | None:
    """The active token with this secret, or None."""
    row = conn.execute(
        select(api_tokens.c.id, api_tokens.c.name, api_tokens.c.daily_cap_picos).where(
            api_tokens.c.token_hash == hash_token(secret), api_tokens.c.revoked_at.is_(None)
        )
    ).first()
    return Token(row.id, row.name, row.daily_cap_picos) if row else None
