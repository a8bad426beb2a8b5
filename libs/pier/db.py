"""PostgreSQL: one asyncpg pool per service, in the service's own schema, and forward-only migrations."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import structlog

from pier import passwords
from pier.config import Settings

log = structlog.get_logger("db")
_LIB_SQL = Path(__file__).parent / "sql"


async def create_pool(settings: Settings, schema: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections see `schema` first; the schema is created if missing."""
    password = passwords.read(settings.database_password_file)
    conn = await asyncpg.connect(settings.database_url, password=password)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        settings.database_url,
        password=password,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": f"pier-{schema}"},
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, directory: Path) -> list[str]:
    """Apply, in name order, the SQL files not yet applied: the shared messaging tables first, then
    `directory`'s. Each file runs in its own transaction; replicas starting together wait on a lock."""
    files = sorted(_LIB_SQL.glob("*.sql")) + sorted(directory.glob("*.sql"))
    applied: list[str] = []
    async with pool.acquire() as conn:
        lock = int.from_bytes(hashlib.sha256(str(directory).encode()).digest()[:7], "big")
        await conn.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, at TIMESTAMPTZ DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM migrations")}
            for path in files:
                name = path.name if path.parent == directory else f"lib/{path.name}"
                if name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration applied", name=name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    return applied


async def close_pool(pool: asyncpg.Pool, within: float = 10.0) -> None:
    """Close gracefully, but never wait forever on a connection something still holds."""
    try:
        async with asyncio.timeout(within):
            await pool.close()
    except TimeoutError:
        log.warning("pool connections still in use at close; terminating them")
        pool.terminate()
