"""Git source checks and the credential store, shared by the api (which refuses a bad URL or ref
with a 400 before anything is queued) and the builder (which checks again before git runs).

A credential is kept in the artifact store, readable by the platform's user only: no command or
event ever carries a secret, so the builder reads it there by name.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

# A credential's name becomes a file name: the api's name rule, checked wherever a path is built.
CREDENTIAL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# scp-like ssh addresses: user@host:path
_SCP_RE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:")


class Credential(msgspec.Struct, kw_only=True):
    """A registered git credential: an https token or an ssh deploy key (one of them)."""

    name: str
    token: str | None = None
    username: str = "x-access-token"
    ssh_key: str | None = None


def parse_schemes(setting: str) -> list[str]:
    """`Settings.git_schemes` ("https,ssh") as a list of lower-case schemes."""
    return [s.strip().lower() for s in setting.split(",") if s.strip()]


def scheme_of(url: str) -> str:
    if _SCP_RE.match(url) and "://" not in url:
        return "ssh"
    return urlsplit(url).scheme.lower()


def url_problem(url: str, schemes: list[str]) -> str | None:
    """Why this URL is refused, or None."""
    if not url or url.startswith("-"):
        return "must not be empty or start with '-'"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    scheme = scheme_of(url)
    if scheme not in schemes:
        return f"scheme {scheme or '(none)'!r} is not allowed; allowed: {', '.join(schemes)}"
    if urlsplit(url).password:
        return "must not embed a password; register a credential and name it instead"
    return None


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(setting: str) -> list[Network]:
    """`Settings.git_allow_networks` ("10.0.0.0/8,127.0.0.0/8"); ValueError naming a bad entry."""
    networks: list[Network] = []
    for item in (i.strip() for i in setting.split(",") if i.strip()):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"PIER_GIT_ALLOW_NETWORKS: {item!r} is not a network such as 10.0.0.0/8") from None
    return networks


def host_of(url: str) -> str | None:
    """The host git would connect to; None for a local path (file://)."""
    if _SCP_RE.match(url) and "://" not in url:
        return url.split("@", 1)[1].split(":", 1)[0]
    return urlsplit(url).hostname or None


def network_problem(url: str, allowed: list[Network]) -> str | None:
    """Why git must not connect to this URL's host, or None. Blocking: it resolves the host.

    Loopback, link-local, private and other non-public addresses are refused (the platform's own
    services and cloud metadata live there) unless an admin allows their range."""
    host = host_of(url)
    if host is None:
        return None
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return f"host {host!r} cannot be resolved ({exc})"
    for address in sorted({str(info[4][0]) for info in found}):
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global or any(ip in network for network in allowed):
            continue
        return (
            f"host {host!r} is at {ip}, a loopback, link-local or private address; an admin can allow"
            " its range with PIER_GIT_ALLOW_NETWORKS"
        )
    return None


def ref_problem(ref: str) -> str | None:
    """Why this ref is refused, or None. A leading '-' could be read by git as an option."""
    if not ref or ref.startswith("-"):
        return "must not be empty or start with '-'"
    if any(c.isspace() or ord(c) < 32 for c in ref) or ".." in ref or ref.endswith((".lock", "/")):
        return "is not a valid git ref"
    return None


def credentials_dir(artifacts: Path) -> Path:
    return artifacts / "credentials"


def credential_path(artifacts: Path, name: str) -> Path:
    """ValueError unless `name` is a valid credential name (never `../x`)."""
    if not CREDENTIAL_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid credential name (lower-case letters, digits and -)")
    return credentials_dir(artifacts) / f"{name}.json"


def save_credential(artifacts: Path, credential: Credential) -> None:
    """Blocking. Written readable by this user only, replaced atomically."""
    path = credential_path(artifacts, credential.name)
    folder = credentials_dir(artifacts)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "wb") as handle:
        handle.write(msgspec.json.encode(credential))
    os.replace(tmp, path)


def load_credential(artifacts: Path, name: str) -> Credential | None:
    try:
        return msgspec.json.decode(credential_path(artifacts, name).read_bytes(), type=Credential)
    except FileNotFoundError:
        return None


def credential_names(artifacts: Path) -> list[str]:
    folder = credentials_dir(artifacts)
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
