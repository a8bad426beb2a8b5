"""`pier sources push/list` and `pier git-credentials add/list`: code a model API can be deployed from."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pier.cli import usage
from pier.cli.deploy import upload
from pier.client import Client


def cmd_push(client: Client, args: argparse.Namespace) -> int:
    digest = upload(client, usage.folder(args.path), name=args.name)
    print(f"{args.name}: {digest}")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    named = client.api("GET", "/sources")
    if args.json:
        print(json.dumps(named, indent=2))
        return 0
    for s in named:
        print(f"{s['name']:<30} {s['digest'][:12]}  {s['size']:>10} bytes  {s['updated_at']}")
    return 0


def cmd_credential_add(client: Client, args: argparse.Namespace) -> int:
    # Read from a file or stdin, never from the command line, where `ps` and shell history keep it.
    secret = usage.read_text(args.from_file, "--from-file") if args.from_file else sys.stdin.read()
    body: dict[str, Any] = {"name": args.name}
    if args.ssh_key:
        body["ssh_key"] = secret
    else:
        body["token"] = secret.strip()
        if args.username:
            body["username"] = args.username
    client.api("POST", "/git-credentials", body)
    print(f"git credential {args.name} registered")
    return 0


def cmd_credential_list(client: Client, args: argparse.Namespace) -> int:
    for c in client.api("GET", "/git-credentials"):
        print(c["name"])
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("sources", help="named sources: upload once, deploy to many model APIs")
    ssub = s.add_subparsers(dest="sources_command", required=True)
    push = ssub.add_parser("push", help="upload a folder as a named source")
    push.add_argument("path")
    push.add_argument("--name", required=True)
    push.set_defaults(func=cmd_push)
    ls = ssub.add_parser("list", help="list named sources")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    g = sub.add_parser("git-credentials", help="credentials for private git repositories, used by name")
    gsub = g.add_subparsers(dest="git_credentials_command", required=True)
    add = gsub.add_parser("add", help="register a token (default) or an ssh deploy key, read from stdin or a file")
    add.add_argument("name")
    add.add_argument("--ssh-key", action="store_true", help="the secret is an ssh private key")
    add.add_argument("--username", help="the user name sent with an https token")
    add.add_argument("--from-file", help="read the secret from this file instead of stdin")
    add.set_defaults(func=cmd_credential_add)
    gl = gsub.add_parser("list", help="list credential names")
    gl.set_defaults(func=cmd_credential_list)
