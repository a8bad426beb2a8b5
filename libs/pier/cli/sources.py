"""`pier sources push/list/show` and `pier git-credentials add/list`: code a model API can be deployed from."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pier.cli import usage
from pier.cli.command import add, group, json_flag, printed_json
from pier.cli.deploy import upload
from pier.client import Client
from pier.client.answers import NamedSource


def _line(s: NamedSource) -> str:
    return f"{s['name']:<30} {s['digest'][:12]}  {s['size']:>10} bytes  {s['updated_at']}"


def cmd_push(client: Client, args: argparse.Namespace) -> int:
    digest = upload(client, usage.folder(args.path), name=args.name)
    print(f"{args.name}: {digest}")
    return 0


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    named = client.sources()
    if printed_json(args, named):
        return 0
    for s in named:
        print(_line(s))
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    found = client.source(args.name)
    if printed_json(args, found):
        return 0
    print(f"{_line(found)}  by {found['created_by']}")
    return 0


def cmd_credential_add(client: Client, args: argparse.Namespace) -> int:
    # Read from a file or stdin, never from the command line, where `ps` and shell history keep it.
    secret = usage.read_text(args.from_file, "--from-file") if args.from_file else sys.stdin.read()
    if args.ssh_key:
        client.add_git_credential(args.name, ssh_key=secret)
    else:
        client.add_git_credential(args.name, token=secret.strip(), username=args.username)
    print(f"git credential {args.name} registered")
    return 0


def cmd_credential_list(client: Client, args: argparse.Namespace) -> int:
    found = client.git_credentials()
    if printed_json(args, found):
        return 0
    for c in found:
        print(c["name"])
    return 0


def register(sub: Any) -> None:
    _, ssub = group(
        sub,
        "sources",
        "named sources: upload once, deploy to many model APIs",
        ["pier sources push examples/hello --name hello-src", "pier deploy --source hello-src --name hello"],
        "sources_command",
    )
    push = add(
        ssub,
        "push",
        cmd_push,
        "upload a folder as a named source",
        ["pier sources push examples/hello --name hello-src"],
        ("POST /v1/sources",),
    )
    push.add_argument("path")
    push.add_argument("--name", required=True)
    ls = add(ssub, "list", cmd_list, "list named sources", ["pier sources list --json"], ("GET /v1/sources",))
    json_flag(ls)
    show = add(
        ssub,
        "show",
        cmd_show,
        "show a named source: its digest, size and who pushed it",
        ["pier sources show hello-src"],
        ("GET /v1/sources/{name}",),
    )
    show.add_argument("name")
    json_flag(show)

    _, gsub = group(
        sub,
        "git-credentials",
        "credentials for private git repositories, used by name",
        ["pier git-credentials add gh --from-file token.txt", "pier deploy --git URL --git-credential gh --name x"],
        "git_credentials_command",
    )
    a = add(
        gsub,
        "add",
        cmd_credential_add,
        "register a token (default) or an ssh deploy key, read from stdin or a file (admin)",
        [
            "pier git-credentials add gh --username x-access-token < token.txt",
            "pier git-credentials add deploy --ssh-key --from-file id_ed25519",
        ],
        ("POST /v1/git-credentials",),
    )
    a.add_argument("name")
    a.add_argument("--ssh-key", action="store_true", help="the secret is an ssh private key")
    a.add_argument("--username", help="the user name sent with an https token")
    a.add_argument("--from-file", help="read the secret from this file instead of stdin")
    gl = add(
        gsub,
        "list",
        cmd_credential_list,
        "list credential names",
        ["pier git-credentials list"],
        ("GET /v1/git-credentials",),
    )
    json_flag(gl)
