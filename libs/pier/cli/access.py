"""`pier login`, `whoami`, `users`, `orgs`, `collaborators`, `transfer`: who works on which model API."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from pier.cli.command import add, group, json_flag, printed_json
from pier.cli.usage import UsageError
from pier.client import Client, profile_path, save_profile


def cmd_login(client: Client, args: argparse.Namespace) -> int:
    # From stdin when not given, so the key stays out of the shell's history.
    token = args.token if args.token not in (None, "-") else sys.stdin.readline().strip()
    if not token:
        raise UsageError("--token: give an API key (or pipe it on stdin)")
    with Client(api_url=args.api_url or client.api_url, token=token, gateway_url=client.gateway_url) as signed_in:
        me = signed_in.me()  # refuses a key that does not work before it is saved
    path = save_profile(signed_in.api_url, signed_in.gateway_url, token)
    print(f"signed in as {me['name']} at {signed_in.api_url}; the key is kept in {path}")
    return 0


def cmd_whoami(client: Client, args: argparse.Namespace) -> int:
    me = client.me()
    if printed_json(args, me):
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
    if printed_json(args, users):
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
    if printed_json(args, orgs):
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
    collaborators = client.collaborators(args.model)
    if printed_json(args, collaborators):
        return 0
    owner = client.model(args.model)["owner"]
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


def cmd_keys_create(client: Client, args: argparse.Namespace) -> int:
    key = client.create_key(args.name)
    print(f"API key {key['id']} ({key['name']}) created; shown once (`pier login --token KEY`):")
    print(key["key"])  # the last line: scripts take it with `tail -n 1`
    return 0


def cmd_keys_list(client: Client, args: argparse.Namespace) -> int:
    keys = client.keys()
    if printed_json(args, keys):
        return 0
    print(f"{'ID':<18} {'NAME':<24} {'CREATED':<26} LAST USED")
    for k in keys:
        print(f"{k['id']:<18} {k['name']:<24} {k['created']:<26} {k['last_used'] or 'never'}")
    return 0


def cmd_keys_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_key(args.id)
    print(f"API key {args.id} deleted: it is refused from now on")
    return 0


MODEL = "/v1/models/{ref}"


def register(sub: Any) -> None:
    login = add(
        sub,
        "login",
        cmd_login,
        f"check an API key and keep it in your profile ({profile_path()}, mode 0600)",
        ["pier login < key.txt", "pier login --token pier_... --api-url https://pier.example.org"],
        ("GET /v1/me",),
    )
    login.add_argument("--token", help="the API key; without it (or with -) it is read from stdin")
    login.add_argument("--api-url", help="the api's URL (default: PIER_API_URL, or the one in use now)")
    who = add(sub, "whoami", cmd_whoami, "the user whose API key is in use", ["pier whoami --json"], ("GET /v1/me",))
    json_flag(who)

    _, usub = group(
        sub,
        "users",
        "users (admin): create, list, disable, enable; passwd: your password",
        ["pier users create ada --email ada@example.org", "pier users list"],
        "users_command",
    )
    c = add(
        usub,
        "create",
        cmd_users_create,
        "create a user; their first API key is printed once, as the last line",
        ["pier users create ada --email ada@example.org | tail -n 1"],
        ("POST /v1/users",),
    )
    c.add_argument("name")
    c.add_argument("--email", required=True)
    ls = add(usub, "list", cmd_users_list, "list users", ["pier users list --json"], ("GET /v1/users",))
    json_flag(ls)
    for name, func, text in (
        ("disable", cmd_users_disable, "refuse every API key of the user, at once"),
        ("enable", cmd_users_enable, "accept the user's API keys again"),
    ):
        p = add(usub, name, func, text, [f"pier users {name} ada"], ("PATCH /v1/users/{name}",))
        p.add_argument("name")
    add(
        usub,
        "passwd",
        cmd_users_passwd,
        "set your password for the dashboard (asked for, or read from stdin)",
        ["pier users passwd", "pass show pier | pier users passwd"],
        ("PUT /v1/me/password", "GET /v1/me"),
    )

    _, ksub = group(
        sub,
        "keys",
        "your own API keys: one per machine or script, each deleted on its own",
        ["pier keys create laptop", "pier keys list", "pier keys delete KEY_ID"],
        "keys_command",
    )
    kc = add(
        ksub,
        "create",
        cmd_keys_create,
        "create an API key; it is printed once, as the last line",
        ["pier keys create ci | tail -n 1"],
        ("POST /v1/me/keys",),
    )
    kc.add_argument("name", help="a label for the key, e.g. the machine that uses it")
    kl = add(
        ksub,
        "list",
        cmd_keys_list,
        "list your API keys (never their secrets)",
        ["pier keys list --json"],
        ("GET /v1/me/keys",),
    )
    json_flag(kl)
    kd = add(
        ksub,
        "delete",
        cmd_keys_delete,
        "delete one of your API keys: it is refused at once",
        ["pier keys delete pier_0123456789ab"],
        ("DELETE /v1/me/keys/{id}",),
    )
    kd.add_argument("id", metavar="KEY_ID")

    _, osub = group(
        sub,
        "orgs",
        "organizations: create, list, add, remove (admin, but list)",
        ["pier orgs create team", "pier orgs add team ada", "pier collaborators add hello org:team --role editor"],
        "orgs_command",
    )
    c = add(osub, "create", cmd_orgs_create, "create an organization", ["pier orgs create team"], ("POST /v1/orgs",))
    c.add_argument("name")
    ls = add(
        osub,
        "list",
        cmd_orgs_list,
        "list organizations and their members",
        ["pier orgs list --json"],
        ("GET /v1/orgs",),
    )
    json_flag(ls)
    for name, func, method in (("add", cmd_orgs_add, "PUT"), ("remove", cmd_orgs_remove, "DELETE")):
        p = add(
            osub,
            name,
            func,
            f"{name} a member",
            [f"pier orgs {name} team ada"],
            (f"{method} /v1/orgs/{{org}}/members/{{user}}",),
        )
        p.add_argument("org")
        p.add_argument("user")

    _, csub = group(
        sub,
        "collaborators",
        "who shares a model API, and with which role",
        ["pier collaborators add hello bob --role editor", "pier collaborators list hello"],
        "collaborators_command",
    )
    a = add(
        csub,
        "add",
        cmd_collaborators_add,
        "give a user, or org:NAME, a role (owner only)",
        ["pier collaborators add hello bob", "pier collaborators add hello org:team --role editor"],
        (f"PUT {MODEL}/collaborators/{{principal}}",),
    )
    a.add_argument("model", metavar="NAME")
    a.add_argument("principal", metavar="PRINCIPAL", help="a user name, or org:NAME for an organization")
    a.add_argument("--role", choices=("viewer", "editor"), default="viewer")
    ls = add(
        csub,
        "list",
        cmd_collaborators_list,
        "list the owner and the collaborators (--json: the collaborators, as the API gives them)",
        ["pier collaborators list hello"],
        (f"GET {MODEL}/collaborators", f"GET {MODEL}"),
    )
    ls.add_argument("model", metavar="NAME")
    json_flag(ls)
    r = add(
        csub,
        "remove",
        cmd_collaborators_remove,
        "take a collaborator's role away",
        ["pier collaborators remove hello bob"],
        (f"DELETE {MODEL}/collaborators/{{principal}}",),
    )
    r.add_argument("model", metavar="NAME")
    r.add_argument("principal", metavar="PRINCIPAL")

    t = add(
        sub,
        "transfer",
        cmd_transfer,
        "hand a model API to a new owner (owner or admin)",
        ["pier transfer hello bob"],
        (f"POST {MODEL}/transfer",),
    )
    t.add_argument("model", metavar="NAME")
    t.add_argument("user", metavar="USER")
