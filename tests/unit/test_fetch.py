"""`python -m pier.fetch`, a pod's init container: it unpacks an image by digest only when the code it
copied has the digest the image is named by; a tampered store or a bad digest stops the pod."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from pier.artifacts import ImageManifest, Store, image_digest, tree_digest
from pier.fetch import FetchError, fetch
from pier.spec import Entrypoint


def image(store: Store) -> str:
    code = store.root / "staging" / "code"
    code.mkdir(parents=True)
    (code / "predict.py").write_text("def predict(x):\n    return x\n")
    entrypoint = Entrypoint(file="predict.py", function="predict")
    env_hash = "e" * 64
    (store.env(env_hash) / "bin").mkdir(parents=True)
    (store.env(env_hash) / "pyvenv.cfg").write_text("home = /usr/bin\n")
    code_digest = tree_digest(code)
    digest = image_digest(code_digest, env_hash, entrypoint)
    folder = store.image(digest)
    (folder / "runtime" / "pier").mkdir(parents=True)
    code.rename(folder / "code")
    manifest = ImageManifest(
        digest=digest, code_digest=code_digest, env_hash=env_hash, python="python", entrypoint=entrypoint
    )
    (folder / "image.json").write_bytes(msgspec.json.encode(manifest))
    return digest


def run_fetch(store: Store, digest: str, into: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pier.fetch", "--store", str(store.root), "--digest", digest, "--into", str(into)]
    return subprocess.run(argv, capture_output=True, text=True)


def test_an_image_is_unpacked_when_its_digest_checks(tmp_path: Path) -> None:
    store = Store(tmp_path / "artifacts")
    digest = image(store)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pier.fetch",
            "--store",
            str(store.root),
            "--digest",
            digest,
            "--into",
            str(tmp_path / "pod"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pod" / "work" / "predict.py").read_text().startswith("def predict")
    assert (tmp_path / "pod" / "env" / "pyvenv.cfg").exists() and (tmp_path / "pod" / "runtime" / "pier").is_dir()


def test_tampered_code_or_a_bad_digest_stops_the_pod(tmp_path: Path) -> None:
    store = Store(tmp_path / "artifacts")
    digest = image(store)
    (store.image(digest) / "code" / "predict.py").write_text("def predict(x):\n    return 'owned'\n")
    with pytest.raises(FetchError, match=r"the code of image .* has digest"):
        fetch(store, digest, tmp_path / "pod")
    with pytest.raises(FetchError, match="not a sha256 digest"):
        fetch(store, "../../etc", tmp_path / "pod")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pier.fetch",
            "--store",
            str(store.root),
            "--digest",
            "0" * 64,
            "--into",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "is not in the artifact store" in done.stderr
