"""`pier tokens create|list|revoke` and `pier promote`: who may call a model API, and which version `prod` is."""

from __future__ import annotations

import argparse
from typing import Any

from pier.cli.command import add, group, json_flag, printed_json
from pier.client import Client

MODEL = "/v1/models/{ref}"


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    token = client.create_token(args.model, args.name)
    print(f"token {token['id']} ({token['name']}) for {args.model}; shown once, keep it safe:")
    print(token["token"])  # the last line: scripts take it with `tail -n 1`
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    tokens = client.tokens(args.model)
    if printed_json(args, tokens):
        return 0
    print(f"{'ID':<14} {'NAME':<24} {'CREATOR':<12} {'CREATED':<26} LAST USED")
    for t in tokens:
        print(f"{t['id']:<14} {t['name']:<24} {t['creator']:<12} {t['created']:<26} {t['last_used'] or 'never'}")
    return 0


def cmd_revoke(client: Client, args: argparse.Namespace) -> int:
    client.revoke_token(args.model, args.token_id)
    print(f"token {args.token_id} of {args.model} revoked")
    return 0


def cmd_promote(client: Client, args: argparse.Namespace) -> int:
    client.promote(args.model, args.version, args.label)
    print(f"{args.model}: {args.label} -> version {args.version}")
    return 0


def register(sub: Any) -> None:
    _, tsub = group(
        sub,
        "tokens",
        "access tokens of a restricted model API",
        ["pier tokens create hello --name ci", "pier tokens list hello", "pier tokens revoke hello TOKEN_ID"],
        "tokens_command",
    )
    c = add(
        tsub,
        "create",
        cmd_create,
        "create a token; the secret is printed once, as the last line",
        ["pier tokens create hello --name ci | tail -n 1"],
        (f"POST {MODEL}/tokens",),
    )
    c.add_argument("model", metavar="NAME")
    c.add_argument("--name", required=True, help="a label for the token, e.g. who uses it")
    ls = add(
        tsub,
        "list",
        cmd_list,
        "list tokens (never their secrets)",
        ["pier tokens list hello --json"],
        (f"GET {MODEL}/tokens",),
    )
    ls.add_argument("model", metavar="NAME")
    json_flag(ls)
    r = add(
        tsub,
        "revoke",
        cmd_revoke,
        "revoke a token: every gateway refuses it within a second",
        ["pier tokens revoke hello pier_0123456789ab"],
        (f"DELETE {MODEL}/tokens/{{token_id}}",),
    )
    r.add_argument("model", metavar="NAME")
    r.add_argument("token_id", metavar="TOKEN_ID")

    p = add(
        sub,
        "promote",
        cmd_promote,
        "point a label (default prod) at a version (routing mode advanced)",
        ["pier promote hello 2", "pier promote hello 3 --label canary"],
        (f"PUT {MODEL}/labels/{{label}}",),
    )
    p.add_argument("model", metavar="NAME")
    p.add_argument("version", metavar="VERSION", type=int)
    p.add_argument("--label", default="prod")
