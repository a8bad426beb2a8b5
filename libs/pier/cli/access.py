"""`pier login`, `whoami`, `users`, `orgs`, `collaborators`, `transfer`: who works on which model API."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from pier.cli.usage import UsageError
from pier.client import Client, profile_path, save_profile


def cmd_login(client: Client, args: argparse.Namespace) -> int:
    # From stdin when not given, so the key stays out of the shell's history.
    token = args.token if args.token not in (None, "-") else sys.stdin.readline().strip()
    if not token:
        raise UsageError("--token: give an API key (or pipe it on stdin)")
    signed_in = Client(api_url=args.api_url or client.api_url, token=token, gateway_url=client.gateway_url)
    me = signed_in.me()  # refuses a key that does not work before it is saved
    path = save_profile(signed_in.api_url, signed_in.gateway_url, token)
    print(f"signed in as {me['name']} at {signed_in.api_url}; the key is kept in {path}")
    return 0


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    me = client.me()
    if args.json:
        print(json.dumps(me, indent=2))
        return 0
    admin = " (admin)" if me["admin"] else ""
    orgs = f"  orgs: {', '.join(me['orgs'])}" if me["orgs"] else ""
    print(f"{me['name']}{admin}  {me['email']}{orgs}")
    return 0


def cmd_users_create(client: Client, args: argparse.Namespace) -> int:
    user = client.create_user(args.name, args.email)
    print(f"user {user['name']} created; their first API key, shown once (`pier login --token KEY`):")
    print(user["key"]["key"])  # the last line: scripts take it with `tail -n 1`
    return 0


def cmd_users_list(client: Client, args: argparse.Namespace) -> int:
    users = client.users()
    if args.json:
        print(json.dumps(users, indent=2))
        return 0
    print(f"{'NAME':<24} {'EMAIL':<32} STATE")
    for u in users:
        state = "disabled" if u["disabled"] else ("admin" if u["admin"] else "enabled")
        print(f"{u['name']:<24} {u['email']:<32} {state}")
    return 0


def cmd_users_disable(client: Client, args: argparse.Namespace) -> int:
    client.set_disabled(args.name, True)
    print(f"user {args.name} disabled: their API keys are refused from now on")
    return 0


def cmd_users_enable(client: Client, args: argparse.Namespace) -> int:
    client.set_disabled(args.name, False)
    print(f"user {args.name} enabled")
    return 0


def cmd_users_passwd(client: Client, args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; nothing changed")
    else:
        password = sys.stdin.readline().rstrip("\n")  # e.g. from a password manager's pipe
    client.set_password(password)
    print(f"password of {client.me()['name']} set; other dashboard sessions are signed out")
    return 0


def cmd_orgs_create(client: Client, args: argparse.Namespace) -> int:
    client.create_org(args.name)
    print(f"organization {args.name} created")
    return 0


def cmd_orgs_list(client: Client, args: argparse.Namespace) -> int:
    orgs = client.orgs()
    if args.json:
        print(json.dumps(orgs, indent=2))
        return 0
    for o in orgs:
        print(f"{o['name']:<24} {', '.join(o['members']) or '(no members)'}")
    return 0


def cmd_orgs_add(client: Client, args: argparse.Namespace) -> int:
    client.add_member(args.org, args.user)
    print(f"{args.user} is a member of {args.org}")
    return 0


def cmd_orgs_remove(client: Client, args: argparse.Namespace) -> int:
    client.remove_member(args.org, args.user)
    print(f"{args.user} is no longer a member of {args.org}")
    return 0


def cmd_collaborators_add(client: Client, args: argparse.Namespace) -> int:
    client.share(args.model, args.principal, args.role)
    print(f"{args.principal} is a{'n' if args.role == 'editor' else ''} {args.role} of {args.model}")
    return 0


def cmd_collaborators_list(client: Client, args: argparse.Namespace) -> int:
    owner = client.model(args.model)["owner"]
    collaborators = client.collaborators(args.model)
    if args.json:
        print(json.dumps({"owner": owner, "collaborators": collaborators}, indent=2))
        return 0
    print(f"{'PRINCIPAL':<28} ROLE")
    print(f"{owner:<28} owner")
    for c in collaborators:
        print(f"{c['principal']:<28} {c['role']}")
    return 0


def cmd_collaborators_remove(client: Client, args: argparse.Namespace) -> int:
    client.unshare(args.model, args.principal)
    print(f"{args.principal} no longer collaborates on {args.model}")
    return 0


def cmd_transfer(client: Client, args: argparse.Namespace) -> int:
    client.transfer(args.model, args.user)
    print(f"{args.model} is owned by {args.user} now")
    return 0


def register(sub: Any) -> None:
    login = sub.add_parser("login", help=f"keep an API key in your profile ({profile_path()}, mode 0600)")
    login.add_argument("--token", help="the API key; without it (or with -) it is read from stdin")
    login.add_argument("--api-url", help="the api's URL (default: PIER_API_URL, or the one in use now)")
    login.set_defaults(func=cmd_login)
    who = sub.add_parser("whoami", help="the user whose API key is in use")
    who.add_argument("--json", action="store_true")
    who.set_defaults(func=cmd_whoami)

    users = sub.add_parser("users", help="users (admin): create, list, disable, enable; passwd: your password")
    usub = users.add_subparsers(dest="users_command", required=True)
    c = usub.add_parser("create", help="create a user; their first API key is printed once, as the last line")
    c.add_argument("name")
    c.add_argument("--email", required=True)
    c.set_defaults(func=cmd_users_create)
    ls = usub.add_parser("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_users_list)
    for name, func, text in (
        ("disable", cmd_users_disable, "refuse every API key of the user, at once"),
        ("enable", cmd_users_enable, "accept the user's API keys again"),
    ):
        p = usub.add_parser(name, help=text)
        p.add_argument("name")
        p.set_defaults(func=func)

    pw = usub.add_parser("passwd", help="set your password for the dashboard (asked for, or read from stdin)")
    pw.set_defaults(func=cmd_users_passwd)

    orgs = sub.add_parser("orgs", help="organizations: create, list, add, remove (admin, but list)")
    osub = orgs.add_subparsers(dest="orgs_command", required=True)
    c = osub.add_parser("create")
    c.add_argument("name")
    c.set_defaults(func=cmd_orgs_create)
    ls = osub.add_parser("list")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_orgs_list)
    for name, func in (("add", cmd_orgs_add), ("remove", cmd_orgs_remove)):
        p = osub.add_parser(name, help=f"{name} a member")
        p.add_argument("org")
        p.add_argument("user")
        p.set_defaults(func=func)

    collab = sub.add_parser("collaborators", help="who shares a model API, and with which role")
    csub = collab.add_subparsers(dest="collaborators_command", required=True)
    a = csub.add_parser("add", help="give a user, or org:NAME, a role (owner only)")
    a.add_argument("model", metavar="NAME")
    a.add_argument("principal", metavar="PRINCIPAL", help="a user name, or org:NAME for an organization")
    a.add_argument("--role", choices=("viewer", "editor"), default="viewer")
    a.set_defaults(func=cmd_collaborators_add)
    ls = csub.add_parser("list")
    ls.add_argument("model", metavar="NAME")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_collaborators_list)
    r = csub.add_parser("remove")
    r.add_argument("model", metavar="NAME")
    r.add_argument("principal", metavar="PRINCIPAL")
    r.set_defaults(func=cmd_collaborators_remove)

    t = sub.add_parser("transfer", help="hand a model API to a new owner (owner or admin)")
    t.add_argument("model", metavar="NAME")
    t.add_argument("user", metavar="USER")
    t.set_defaults(func=cmd_transfer)
