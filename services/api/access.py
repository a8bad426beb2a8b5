"""Roles on model APIs: who is the owner, who collaborates (directly or through an organization),
and what a caller may see. Domain logic only: the policy table (services/api/policy.py) says which
role a route needs, and the api's auth middleware compares."""

from __future__ import annotations

import asyncpg

from services.api.policy import Role

ORG_PREFIX = "org:"
ROLES = {"viewer": Role.VIEWER, "editor": Role.EDITOR}


async def role_on(conn: asyncpg.Connection, model: asyncpg.Record, user: str, admin: bool) -> Role | None:
    """The caller's role on `model`: the highest of admin, owner, their own and their organizations'
    collaborator roles, and viewer on a public model API; None when they may not even see it."""
    if admin:
        return Role.ADMIN
    if model["owner"] == user:
        return Role.OWNER
    granted = await conn.fetch(
        "SELECT role FROM collaborators WHERE model_id = $1 AND (principal = $2 OR principal IN"
        " (SELECT 'org:' || org FROM org_members WHERE user_name = $2))",
        model["id"],
        user,
    )
    roles = [ROLES[r["role"]] for r in granted]
    if model["visibility"] == "public":
        roles.append(Role.VIEWER)
    return max(roles, default=None)


async def visible_models(conn: asyncpg.Connection, user: str, admin: bool) -> list[asyncpg.Record]:
    """The model APIs the caller may see, by name: all for an admin; else owned, shared (directly or
    through an organization) and public ones."""
    if admin:
        return list(await conn.fetch("SELECT * FROM models WHERE state <> 'terminated' ORDER BY name"))
    return list(
        await conn.fetch(
            "SELECT * FROM models m WHERE state <> 'terminated' AND (owner = $1 OR visibility = 'public'"
            " OR EXISTS (SELECT 1 FROM collaborators c WHERE c.model_id = m.id AND (c.principal = $1"
            " OR c.principal IN (SELECT 'org:' || org FROM org_members WHERE user_name = $1))))"
            " ORDER BY name",
            user,
        )
    )


async def callers(conn: asyncpg.Connection, model_id: str) -> list[str]:
    """Every enabled user with a role on the model API (its owner, collaborators, members of
    collaborating organizations): those whose own API key may call it when it is restricted."""
    rows = await conn.fetch(
        "SELECT u.name FROM users u, models m WHERE m.id = $1 AND NOT u.disabled AND (u.name = m.owner"
        " OR u.name IN (SELECT principal FROM collaborators WHERE model_id = $1)"
        " OR u.name IN (SELECT om.user_name FROM org_members om JOIN collaborators c"
        " ON c.principal = 'org:' || om.org WHERE c.model_id = $1)) ORDER BY u.name",
        model_id,
    )
    return [r["name"] for r in rows]
