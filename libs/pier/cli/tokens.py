"""`pier tokens create|list|revoke` and `pier promote`: who may call a model API, and which version `prod` is."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pier.client import Client


def cmd_create(client: Client, args: argparse.Namespace) -> int:
    token = client.create_token(args.model, args.name)
    print(f"token {token['id']} ({token['name']}) for {args.model}; shown once, keep it safe:")
    print(token["token"])  # the last line: scripts take it with `tail -n 1`
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    tokens = client.tokens(args.model)
    if args.json:
        print(json.dumps(tokens, indent=2))
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
    t = sub.add_parser("tokens", help="access tokens of a restricted model API")
    tsub = t.add_subparsers(dest="tokens_command", required=True)
    c = tsub.add_parser("create", help="create a token; the secret is printed once, as the last line")
    c.add_argument("model", metavar="NAME")
    c.add_argument("--name", required=True, help="a label for the token, e.g. who uses it")
    c.set_defaults(func=cmd_create)
    ls = tsub.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("model", metavar="NAME")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = tsub.add_parser("revoke", help="revoke a token: every gateway refuses it within a second")
    r.add_argument("model", metavar="NAME")
    r.add_argument("token_id", metavar="TOKEN_ID")
    r.set_defaults(func=cmd_revoke)

    p = sub.add_parser("promote", help="point a label (default prod) at a version (routing mode advanced)")
    p.add_argument("model", metavar="NAME")
    p.add_argument("version", metavar="VERSION", type=int)
    p.add_argument("--label", default="prod")
    p.set_defaults(func=cmd_promote)
