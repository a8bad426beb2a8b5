"""`pier deploy`: pack a folder, upload it, create the model API or a new version, wait."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from pier.cli import progress, usage
from pier.cli.command import add
from pier.cli.progress import Progress
from pier.cli.usage import LocalError, UsageError
from pier.client import Client, Unreachable
from pier.client.answers import Model, Version


def _example_curl(client: Client, model: Model) -> str:
    url = f"{client.gateway_url}/models/{model['name']}/latest/model"
    auth = ' -H "Authorization: Bearer $TOKEN"' if model.get("access") == "restricted" else ""
    return f"curl -s -X POST {shlex.quote(url)}{auth} -H 'Content-Type: application/json' -d '{{\"data\": {{}}}}'"


# With neither routes nor --file, the Domino /model endpoint serves predict() of predict.py.
DEFAULT_FILE, DEFAULT_FUNCTION = "predict.py", "predict"
ROUTES_FILE = "routes.yaml"  # a folder's routes, used when --routes is not given


def cmd_deploy(client: Client, args: argparse.Namespace) -> int:
    shown = Progress()
    try:
        return _deploy(client, args, shown)
    finally:
        shown.end()


def _deploy(client: Client, args: argparse.Namespace, shown: Progress) -> int:
    origins = [o for o in (args.path, args.git, args.source) if o]
    if len(origins) != 1:
        raise UsageError("give exactly one of: a folder (PATH), --git URL, --source NAME")
    folder = usage.folder(args.path) if args.path else None
    routes_file = args.routes
    if routes_file is None and folder is not None and (folder / ROUTES_FILE).is_file():
        routes_file = folder / ROUTES_FILE
        print(f"using the routes in {routes_file} (give --routes to choose another file)", flush=True)
    routes = usage.load_routes(routes_file) if routes_file is not None else []
    code: dict[str, Any] = {"routes": routes, **_entry(args, routes)}
    if args.git:
        code.update(git=args.git, ref=args.ref, git_credential=args.git_credential)
    elif args.source:
        code["source_name"] = args.source
    elif folder is not None:
        print(f"packing {folder} ...", flush=True)
        code["source"] = upload(client, folder, shown=shown)
        shown.end()  # the upload's line stays as it is, above what follows
    if args.environment:
        code["environment"] = args.environment
    if args.python_version:
        code["python_version"] = args.python_version
    code = {k: v for k, v in code.items() if v is not None}
    if args.health_function:
        code["health_function"] = args.health_function
    health = {f: getattr(args, f) for f in HEALTH_FLAGS if getattr(args, f) is not None}
    if client.exists(args.name):
        if args.volume:
            raise UsageError(f"--volume: volumes are fixed once {args.name} is created; create a new model API instead")
        gateway = {"access": "unrestricted"} if args.unrestricted else {}
        if args.routing_mode:
            gateway["routing_mode"] = args.routing_mode
        if health or gateway:
            client.change_settings(args.name, {**health, **gateway})
        version = client.create_version(args.name, code)
        print(f"{args.name}: building version {version}", flush=True)
    else:
        spec = {**code, **health, "name": args.name, **resource_spec(args)}
        spec.setdefault("request_timeout", 60.0)
        if args.workers:
            spec["workers"] = args.workers
        spec["access"] = "unrestricted" if args.unrestricted else "restricted"
        spec["routing_mode"] = args.routing_mode or "basic"
        if args.volume:
            spec["volumes"] = args.volume
        client.create_model(spec)
        version = 1
        print(f"{args.name}: created; building version 1", flush=True)

    def changed(model: Model, mine: Version | None) -> None:
        if not shown.live:  # on a terminal the progress line says it
            detail = f", version {version} {mine['state']}" if mine else ""
            print(f"  {model['state']}{detail}", flush=True)

    watch = _Watch(client, args.name, version, shown)
    model = client.wait(
        args.name, version, timeout=args.wait, on_change=changed, on_poll=watch.poll if shown.live else None
    )
    shown.end()
    mine = next(v for v in model["versions"] if v["number"] == version)
    if mine["state"] == "failed" or model["state"] == "failed":
        print(f"deploy failed: {mine['reason'] or model['reason']}", file=sys.stderr)
        return 1
    if model["state"] == "waiting":
        # Queued for GPUs: not an error; it starts on its own when GPUs free up.
        print(f"{args.name} is waiting for GPUs: place {model.get('queue_position')} in line ({model['reason']})")
        return 0
    if model["state"] != "running":
        print(f"{args.name} is {model['state']}: {model['reason']}")
        return 0
    print(f"{args.name} version {version} is serving")
    base = f"{client.gateway_url}/models/{model['name']}/latest"
    if "file" in code:
        print(f"  URL:  {base}/model")
        print(f"  try:  {_example_curl(client, model)}")
    for route in routes:
        print(f"  route: {route.get('verb', 'POST')} {base}{route['path']}")
    if model.get("access") == "restricted":
        print(f"  it is restricted: create a token with `pier tokens create {model['name']} --name LABEL`")
    return 0


def _entry(args: argparse.Namespace, routes: list[dict[str, Any]]) -> dict[str, str]:
    """The /model endpoint's file and function: defaulted, unless routes are all the code serves."""
    if routes and args.file is None and args.function is None:
        return {}
    return {"file": args.file or DEFAULT_FILE, "function": args.function or DEFAULT_FUNCTION}


class _Watch:
    """The progress line of a deploy while it waits: the build's newest log line, the place in
    line for GPUs, then the instances ready of those asked for."""

    LOG_EVERY = 1.0  # seconds between two looks at the build log

    def __init__(self, client: Client, name: str, version: int, shown: Progress) -> None:
        self.client, self.name, self.version, self.shown = client, name, version, shown
        self.last_look = 0.0
        self.tail = "waiting for a builder"

    def poll(self, model: Model, mine: Version | None) -> None:
        state = mine["state"] if mine else "building"  # not listed yet: its build is about to start
        if state not in ("built", "serving", "retired", "failed"):
            now = time.monotonic()
            if now - self.last_look >= self.LOG_EVERY:
                self.last_look = now
                lines = self.client.logs(self.name, kind="build", version=self.version, limit=1)["lines"]
                self.tail = lines[0]["line"].strip() if lines else self.tail
            self.shown.show("build", self.tail)
        elif model["state"] == "waiting":
            place = model.get("queue_position")
            self.shown.show("queue", f"place {place} in line for {model.get('gpu_type')} GPUs ({model['reason']})")
        elif state != "failed":
            ready = sum(1 for i in model["running_instances"] if i["version"] == self.version and i["state"] == "ready")
            self.shown.show("start", f"{ready}/{model['instances']} instances ready")


def upload(client: Client, folder: Path, name: str | None = None, shown: Progress | None = None) -> str:
    """Upload a folder as a source; a file in it that cannot be read is the user's to fix, not Pier's."""
    bar = shown or Progress()

    def sent(done: int, total: int) -> None:
        bar.show("upload", progress.bar(done, total))

    try:
        return client.upload_source(folder, name=name, progress=sent if bar.live else None)
    except Unreachable:
        raise
    except OSError as exc:
        raise LocalError(f"{folder}: cannot pack {exc.filename or ''}: {exc.strerror or exc}") from None
    finally:
        if shown is None:  # the bar is this upload's own
            bar.end()


def volume(text: str) -> dict[str, Any]:
    """`--volume NAME:HOST_PATH:MOUNT_PATH[:ro]` -> a volume of POST /v1/models (the api checks the rest)."""
    parts = text.split(":")
    read_only = len(parts) == 4 and parts[3] == "ro"
    if len(parts) not in (3, 4) or (len(parts) == 4 and not read_only) or not all(parts[:3]):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME:HOST_PATH:MOUNT_PATH or NAME:HOST_PATH:MOUNT_PATH:ro")
    return {"name": parts[0], "host_path": parts[1], "mount_path": parts[2], "read_only": read_only}


def add_resource_flags(p: Any) -> None:
    """What a model API runs on (docs/scheduling.md), shared with `pier plan`; fixed once created."""
    p.add_argument("--instances", type=int, help="instances, 1 to 32 (default 2)")
    p.add_argument("--gpu-type", help="the GPU type (`pier gpus` lists them)")
    p.add_argument("--gpu-count", type=int, help="GPUs per instance, 0 to 4 (default 0: CPU only)")
    p.add_argument("--quota", help="a named resource quota (CPU and memory per instance)")
    p.add_argument("--disk-size", help="each instance's working directory limit, e.g. 512m or 10g")


def resource_spec(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("instances", "gpu_type", "gpu_count", "quota", "disk_size")
    return {f: getattr(args, f) for f in fields if getattr(args, f) is not None}


# The health-check policy and request timeout (docs/health.md), shared with `pier settings`.
HEALTH_FLAGS = ("initial_delay", "period", "timeout", "failure_threshold", "request_timeout")


def add_health_flags(p: Any) -> None:
    p.add_argument("--initial-delay", type=float, help="seconds after an instance starts before its first probe")
    p.add_argument("--period", type=float, help="seconds between health probes")
    p.add_argument("--timeout", type=float, help="a probe slower than this many seconds has failed")
    p.add_argument("--failure-threshold", type=int, help="failed probes in a row that make an instance unhealthy")
    p.add_argument("--request-timeout", type=float, help="seconds a call may take (504 after; default 60)")


def register(sub: Any) -> None:
    d = add(
        sub,
        "deploy",
        cmd_deploy,
        "deploy a folder, a named source or a git ref as a model API (or a new version of one)",
        [
            "pier deploy examples/hello --name hello --unrestricted",
            "pier deploy examples/routes --name routes              # serves examples/routes/routes.yaml",
            "pier deploy --git https://github.com/org/repo --ref v1.2 --name repo --gpu-type a100 --gpu-count 1",
            "pier deploy --source hello-src --name hello-2 --instances 4 --workers 2",
        ],
        (
            "POST /v1/sources",
            "GET /v1/models/{ref}",
            "POST /v1/models",
            "POST /v1/models/{ref}/versions",
            "PATCH /v1/models/{ref}",
            "GET /v1/models/{ref}/logs",
        ),
    )
    d.add_argument("path", nargs="?", help="a folder to upload (or give --git or --source)")
    d.add_argument("--git", help="a git repository URL, fetched at build time")
    d.add_argument("--ref", help="with --git: a branch, tag or commit (default: the remote's default branch)")
    d.add_argument("--git-credential", help="with --git: the name of a registered git credential")
    d.add_argument("--source", help="a named source (`pier sources push PATH --name NAME`)")
    d.add_argument("--environment", help="a compute environment (`pier environments`)")
    d.add_argument("--python-version", help="the Python version of the environment, e.g. 3.11")
    d.add_argument("--name", required=True)
    d.add_argument(
        "--file",
        help=f"the entry file of the /model endpoint (default {DEFAULT_FILE}; none when routes are given without it)",
    )
    d.add_argument(
        "--function",
        help=f"the function /model serves (default {DEFAULT_FUNCTION}; none when routes are given without it)",
    )
    d.add_argument(
        "--routes",
        help=f"a YAML file whose top-level key `routes` lists the routes (default: PATH/{ROUTES_FILE} if there is one)",
    )
    d.add_argument("--health-function")
    d.add_argument("--workers", type=int)
    add_resource_flags(d)
    d.add_argument(
        "--volume",
        type=volume,
        action="append",
        metavar="NAME:HOST_PATH:MOUNT_PATH[:ro]",
        help="a host folder (under PIER_VOLUME_ROOTS) every instance sees at MOUNT_PATH; :ro read-only; repeatable",
    )
    d.add_argument("--unrestricted", action="store_true", help="callable without an access token (default: restricted)")
    d.add_argument(
        "--routing-mode",
        choices=("basic", "advanced"),
        help="basic: only `latest` serves (default); advanced: `latest` and promoted labels such as prod",
    )
    add_health_flags(d)
    d.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the deploy (default 600)")
