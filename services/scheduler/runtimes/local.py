"""The local runtime driver: each instance is an OS process on this host, in a process group of its own.

Layout under `<home>/instances/<instance_id>/`:

    work/          a fresh copy of the image's code/ for each run (nothing a run writes survives it)
    instance.log   stdout and stderr of every run, appended
    pid            JSON {pid, start_time, port, uid, secret} of the current run (the platform's only)

A process is identified by its pid *and* its start time (field 22 of /proc/<pid>/stat, in clock
ticks since boot), so a pid the kernel has recycled for some other program is never adopted or
signalled. Instances run in a process group of their own: they outlive a scheduler crash, and one
signal to the group reaches the harness's worker processes too.

As root, each run is a user of its own (see pier/isolation.py); its harness answers only callers that
send the run's secret, which the scheduler hands to the gateway and the monitor in the KV record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog

from pier import isolation
from pier.artifacts import Store
from pier.config import Settings
from services.scheduler.inventory import Inventory, discover
from services.scheduler.runtimes import mounts
from services.scheduler.runtimes.base import Exit, Handle, InstanceSpec, StartError

log = structlog.get_logger("scheduler.local")

STOP_TIMEOUT = 10.0
# Seconds an ended run's output copier gets to write what it held, before the exit is reported.
OUTPUT_DRAIN = 2.0
_POLL = 0.05


class LocalRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home
        self.store = Store(settings.artifacts)
        # Popen objects of the runs this process started: kept so we, not subprocess's own
        # clean-up, reap them, and so their exit status can be read.
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._volumes_refused: str | None = None

    async def inventory(self) -> Inventory:
        """The GPUs of this host (NVML), or the simulated ones PIER_GPUS declares."""
        return discover(self.settings.gpus)

    def instance_dir(self, instance_id: str) -> Path:
        return instances_root(self.home) / instance_id

    def log_path(self, instance_id: str) -> Path:
        return self.instance_dir(instance_id) / "instance.log"

    async def start(self, spec: InstanceSpec) -> Handle:
        """Start a run from the image: a fresh work dir, a free port, a process group of its own.
        Returns once the process exists; readiness is the monitor's business."""
        manifest = self.store.manifest(spec.image)
        if manifest is None:
            raise StartError(f"image {spec.image} does not exist (no image.json in {self.store.image(spec.image)})")
        if spec.volumes:
            # Never a run without the volumes it was placed with: refused before anything is made.
            problem = await asyncio.to_thread(self.volumes_refused) or await asyncio.to_thread(
                mounts.check, spec.volumes, self.settings.volume_roots
            )
            if problem:
                raise StartError(f"cannot mount the model API's volumes: {problem}")
        image_dir = self.store.image(spec.image)
        directory = self.instance_dir(spec.instance_id)
        work = directory / "work"
        # A start comes when no recorded run is alive, so any process still in the instance's folder
        # is a run a scheduler started and was killed before it recorded: stopped, or it runs twice.
        if stopped := await asyncio.to_thread(_stop_unrecorded, directory):
            self.note(spec.instance_id, f"pier: stopped {stopped} process(es) of a run no scheduler recorded")
        try:
            await asyncio.to_thread(_fresh_copy, image_dir / "code", work)
        except OSError as exc:
            raise StartError(f"could not prepare the work dir from image {spec.image}: {exc}") from exc
        # Bound here and handed over open: a port only chosen here could be taken by anything on the
        # host before the harness bound it, and the run then failed with "address already in use".
        listener = _listener()
        port = int(listener.getsockname()[1])
        secret = secrets.token_urlsafe(32)
        uid, why_not = await asyncio.to_thread(self._isolate, spec.instance_id, work, Path(manifest.python))
        self.note(spec.instance_id, f"pier: runs as uid {uid}, gid {uid}" if uid is not None else why_not)
        env = {
            **_base_env(),
            # Its own home, so nothing (a cache, a config) is written where another run could read it.
            "HOME": str(work),
            "PYTHONPATH": str(image_dir / "runtime"),
            "PYTHONUNBUFFERED": "1",
            "PIER_WORKING_DIR": str(work),
            "PIER_ENTRYPOINT": msgspec.json.encode(spec.entrypoint).decode(),
            "PIER_PORT": str(port),
            "PIER_LISTEN_FD": str(listener.fileno()),
            "PIER_WORKERS": str(spec.workers),
            "PIER_REQUEST_TIMEOUT": str(spec.request_timeout),
            "PIER_MODEL_VERSION_ID": spec.version_id,
            "PIER_MODEL_VERSION_NUMBER": str(spec.version),
            "PIER_INSTANCE_ID": spec.instance_id,
            "PIER_INSTANCE_SECRET": secret,
            "PIER_MAX_BODY_BYTES": str(self.settings.max_body_bytes),
            "PIER_REQUEST_LOG_BUFFER": str(self.settings.request_log_buffer),
            "PIER_OUTPUT_RATE": str(self.settings.instance_output_rate),
            "CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_devices),
        }
        argv = [manifest.python, "-m", "pier.harness"]
        self.note(spec.instance_id, _describe_limits(spec))
        # With volumes the run starts as root (mounting needs it) and becomes its uid through setpriv.
        spawn_uid = uid
        if spec.volumes:
            argv, spawn_uid = mounts.wrap(argv, spec.volumes, uid), None
            self.note(spec.instance_id, "pier: volumes in a private mount namespace: " + _describe_volumes(spec))
        try:
            # Without cgroups, memory is limited per process with RLIMIT_AS, set in the child before it
            # runs: another uid's limits cannot be changed from outside without CAP_SYS_RESOURCE.
            limit = spec.memory if spec.memory > 0 and cgroup_dir() is None else 0
            proc = await asyncio.to_thread(
                _spawn, argv, env, work, self.log_path(spec.instance_id), spawn_uid, limit, listener.fileno()
            )
        except OSError as exc:
            raise StartError(f"could not run {manifest.python}: {exc}") from exc
        finally:
            listener.close()  # the run holds its own copy
        start_time = _stat(proc.pid)
        # A child that has not been reaped keeps its /proc entry, so its start time is readable.
        assert start_time is not None
        handle = Handle(pid=proc.pid, start_time=start_time.start_time, port=port, uid=uid, secret=secret)
        self._children[spec.instance_id] = proc
        # Recorded at once: a run no pid file names is one a later scheduler cannot adopt.
        _write_pid_file(directory / "pid", handle)
        if spec.cpu > 0 or spec.memory > 0:
            how = await asyncio.to_thread(apply_quota, proc.pid, spec)
            self.note(spec.instance_id, f"pier: quota {spec.quota or 'custom'} applied with {how}")
        log.info("instance started", instance_id=spec.instance_id, pid=proc.pid, port=port)
        return handle

    def _isolate(self, instance_id: str, work: Path, python: Path) -> tuple[int | None, str]:
        """The uid the run gets, with its work dir made its own; or None and the log line saying why
        not. Blocking."""
        reason = isolation.not_isolated_reason()
        if reason is not None:
            return None, f"pier: runs as the platform user: {reason}; not isolated"
        isolation.lock_down_home(self.home, self.store.root)
        isolation.make_searchable(python)
        taken = [h.uid for h in map(_read_pid_file, instances_root(self.home).glob("*/pid")) if h and h.uid]
        uid = isolation.instance_uid(instance_id, taken)
        isolation.own_work_dir(work, uid)
        return uid, ""

    def find(self, instance_id: str) -> Handle | None:
        """The live run of an instance, from its pid file, or None when there is none."""
        handle = _read_pid_file(self.instance_dir(instance_id) / "pid")
        if handle is None or not _alive(handle.pid, handle.start_time):
            return None
        return handle

    def poll(self, instance_id: str, handle: Handle) -> Exit | None:
        """None while the run lives; how it ended once it has."""
        proc = self._children.get(instance_id)
        if proc is not None and proc.pid == handle.pid:
            status = proc.poll()
            return None if status is None else Exit(status=status)
        return None if _alive(handle.pid, handle.start_time) else Exit(status=None)

    async def stop(self, instance_id: str) -> bool:
        """Stop the instance's run, if any (SIGTERM to its group, SIGKILL after 10 s), and remove
        its work dir. True when a live process was stopped. Safe to call again."""
        directory = self.instance_dir(instance_id)
        proc = self._children.pop(instance_id, None)
        stopped = await asyncio.to_thread(_stop_recorded, directory, STOP_TIMEOUT)
        if proc is not None:
            # Reap our child so it does not linger as a zombie; it is already dead or dying.
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        await asyncio.to_thread(shutil.rmtree, directory / "work", True)
        if stopped:
            log.info("instance stopped", instance_id=instance_id)
        return stopped

    async def last_words(self, instance_id: str, handle: Handle) -> str:
        """The last line of an ended run's log, once its output copier has written what it held: the
        copier is in the run's group and ends at the end of its pipe (bounded: a worker that outlives
        the harness keeps the pipe open)."""
        await asyncio.to_thread(_wait_gone, handle.pid, OUTPUT_DRAIN)
        return last_line(self.log_path(instance_id))

    def note(self, instance_id: str, line: str) -> None:
        """A line from the platform in the instance's log, where the user reads why."""
        with _open_log(self.log_path(instance_id), "a") as out:
            out.write(line + "\n")

    def disk_usage(self, instance_id: str) -> int:
        """Bytes used by the run's work dir (what disk_size limits)."""
        return _du(self.instance_dir(instance_id) / "work")

    async def purge(self, instance_id: str) -> None:
        """Remove everything of a stopped instance: work dir, log, pid file (terminate)."""
        await self.stop(instance_id)
        await asyncio.to_thread(shutil.rmtree, self.instance_dir(instance_id), True)

    def volumes_refused(self) -> str:
        """Why runs here cannot have volumes (not root, no util-linux, no mount namespaces), or "".
        Found out once: the scheduler publishes it with every inventory."""
        if self._volumes_refused is None:
            self._volumes_refused = mounts.refused()
        return self._volumes_refused


# ---- quotas ---------------------------------------------------------------------------------------


def _describe_limits(spec: InstanceSpec) -> str:
    gpus = ",".join(spec.gpu_devices) or "none"
    cpu = f"{spec.cpu:g}" if spec.cpu else "unlimited"
    memory = f"{spec.memory} bytes" if spec.memory else "unlimited"
    disk = f"{spec.disk_size} bytes" if spec.disk_size else "unlimited"
    return f"pier: CUDA_VISIBLE_DEVICES={gpus}; cpu {cpu}; memory {memory}; disk_size {disk}"


def _describe_volumes(spec: InstanceSpec) -> str:
    return ", ".join(f"{v.host_path} at {v.mount_path}{' (read-only)' if v.read_only else ''}" for v in spec.volumes)


def cgroup_dir() -> Path | None:
    """Our cgroup v2 directory when we may create child groups with cpu and memory limits, else None."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").exists():
        return None  # cgroups v1 or none: no unified hierarchy
    try:
        own = Path("/proc/self/cgroup").read_text().strip().splitlines()
    except OSError:
        return None
    relative = next((line.split("::", 1)[1] for line in own if line.startswith("0::")), None)
    if relative is None:
        return None
    parent = root / relative.lstrip("/")
    control = parent / "cgroup.subtree_control"
    controllers = control.read_text() if control.exists() else ""
    if "cpu" not in controllers.split() or "memory" not in controllers.split() or not os.access(parent, os.W_OK):
        return None
    return parent


def apply_quota(pid: int, spec: InstanceSpec) -> str:
    """Limit the process (and the workers it forks later) to the quota; returns how it was done."""
    group = cgroup_dir()
    if group is not None:
        try:
            mine = group / f"pier-{spec.instance_id}"
            mine.mkdir(exist_ok=True)
            if spec.cpu > 0:
                (mine / "cpu.max").write_text(f"{int(spec.cpu * 100_000)} 100000")
            if spec.memory > 0:
                (mine / "memory.max").write_text(str(spec.memory))
            (mine / "cgroup.procs").write_text(str(pid))
            return "cgroups v2"
        except OSError as exc:
            log.warning("cgroups v2 not usable; falling back to affinity and rlimits", error=str(exc))
    # Inherited by every process the harness forks, so its workers share the limit's shape (each
    # worker gets the memory limit on its own: rlimits are per process, cgroups are per group).
    if spec.cpu > 0:
        available = sorted(os.sched_getaffinity(0))
        want = max(1, min(len(available), int(-(-spec.cpu // 1))))
        offset = sum(spec.instance_id.encode()) % len(available)
        cpus = {available[(offset + k) % len(available)] for k in range(want)}
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)
    # The memory limit is the RLIMIT_AS `_spawn` set in the child already.
    return "CPU affinity and rlimits (cgroups v2 not available)"


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def instances_root(home: Path) -> Path:
    return home / "instances"


def stop_all(home: Path, timeout: float = STOP_TIMEOUT) -> int:
    """Stop every instance process recorded under `<home>/instances`, all at once, and return
    how many were running. For the `make up` supervisor at Ctrl-C, so no process is left behind;
    the scheduler's reconcile starts them again at the next start."""
    root = instances_root(home)
    targets: list[tuple[Path, Handle]] = []
    running = 0
    for pid_file in sorted(root.glob("*/pid")):
        handle = _read_pid_file(pid_file)
        if handle is not None and _owned(handle.pid, handle.start_time):
            targets.append((pid_file, handle))
            running += _alive(handle.pid, handle.start_time)
    for _, handle in targets:
        _signal_group(handle, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_group_members(h.pid) for _, h in targets):
        time.sleep(_POLL)
    for _, handle in targets:
        if _group_members(handle.pid):
            _signal_group(handle, signal.SIGKILL)
    for pid_file, handle in targets:
        _wait_gone(handle.pid, 5.0)
        pid_file.unlink(missing_ok=True)
    return running


def last_line(path: Path, window: int = 65536) -> str:
    """The last non-empty line of a log file: for an import error, the exception itself."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - window))
            tail = f.read()
    except FileNotFoundError:
        return ""
    for line in reversed(tail.decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip()
    return ""


# ---- processes ----------------------------------------------------------------------------------


class _Stat(msgspec.Struct, frozen=True):
    state: str
    pgrp: int
    start_time: int


def _stat(pid: int) -> _Stat | None:
    """The fields of /proc/<pid>/stat we need, or None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    return _Stat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


def _alive(pid: int, start_time: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat.start_time == start_time and stat.state not in ("Z", "X")


def _owned(pid: int, start_time: int) -> bool:
    """May we signal the process group `pid`? Yes if its leader is our process (same start time),
    or if no process has that pid any more: the kernel does not reuse a pid while a process group
    still carries it, so any survivors in that group are ours."""
    stat = _stat(pid)
    return stat is None or stat.start_time == start_time


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _signal_group(handle: Handle, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(handle.pid, sig)


def _wait_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)
    return True


def _stop_recorded(directory: Path, timeout: float) -> bool:
    pid_file = directory / "pid"
    handle = _read_pid_file(pid_file)
    if handle is None:
        return False
    if not _owned(handle.pid, handle.start_time):
        # The pid now belongs to some other program: ours is long gone.
        pid_file.unlink(missing_ok=True)
        return False
    was_alive = _alive(handle.pid, handle.start_time)
    # Even with the leader dead, its worker processes may still be running in its group.
    if _group_members(handle.pid):
        _signal_group(handle, signal.SIGTERM)
        if not _wait_gone(handle.pid, timeout):
            _signal_group(handle, signal.SIGKILL)
            _wait_gone(handle.pid, 5.0)
    pid_file.unlink(missing_ok=True)
    return was_alive


def _stop_unrecorded(directory: Path, timeout: float = 5.0) -> int:
    """SIGKILL the process groups of processes working in `directory` (the pid file names none of
    them alive when this is called); how many processes there were."""
    prefix = str(directory.resolve()) + os.sep
    groups: set[int] = set()
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        stat = _stat(int(entry.name))
        if (cwd + os.sep).startswith(prefix) and stat is not None and stat.state not in ("Z", "X"):
            groups.add(stat.pgrp)
            found += 1
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _wait_gone(pgid, timeout)
    return found


def _open_log(path: Path, mode: str) -> IO[Any]:
    """The instance log, created the platform's alone: the run writes to it only through the fd it is
    handed, and another instance cannot read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o711)  # the run passes through to its work dir; nobody lists the folder
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, mode)


def _spawn(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    uid: int | None,
    memory_limit: int = 0,
    listener: int | None = None,
) -> subprocess.Popen[bytes]:
    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    with _open_log(log_path, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A process group of its own (one signal reaches the harness's workers too), but in the
            # platform's session: a session of its own is an autogroup of its own to the kernel's
            # scheduler, and on a busy host calls through the gateway then ran at half the rate of the
            # same gateway and harness in one session (bench.platform; see performance.md).
            process_group=0,
            # No passwd entry is needed to become a uid as root; no supplementary groups (root's) kept.
            user=uid,
            group=uid,
            extra_groups=[] if uid is not None else None,
            umask=0o077,
            preexec_fn=limit_memory if memory_limit else None,
            pass_fds=() if listener is None else (listener,),
        )


def _base_env() -> dict[str, str]:
    """The little of the scheduler's environment an instance should see: no PIER_* settings
    (they hold the database URL and the admin token), no virtualenv of the platform, not the
    platform user's HOME or USER (the run gets its own)."""
    keep = (
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    )
    return {k: os.environ[k] for k in keep if k in os.environ}


def _fresh_copy(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=True)


def _listener() -> socket.socket:
    """A listening socket on a free loopback port, for a run to serve on (PIER_LISTEN_FD)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _write_pid_file(path: Path, handle: Handle) -> None:
    tmp = path.with_suffix(".tmp")
    # It holds the run's secret: the platform's alone.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.encode(handle))
    tmp.replace(path)


def _read_pid_file(path: Path) -> Handle | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Handle)
    except (FileNotFoundError, msgspec.DecodeError):
        return None
