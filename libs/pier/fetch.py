"""`python -m pier.fetch`: a model API pod's init container, as KServe's storage initializer is for
model files. It takes one image from the artifact store by digest, checks the digest, and unpacks it
into the pod's work volume, where the harness then runs from:

    <into>/work      the image's code (the harness's working dir; nothing of a run survives it)
    <into>/runtime   the harness (PYTHONPATH)
    <into>/env       the image's Python environment (a relocatable venv: <into>/env/bin/python)

The check: the code's tree digest must be the manifest's, and the manifest's code digest,
environment hash and entrypoint must name the image asked for; anything else exits 1 saying what
differs, and the pod never starts. The store is the platform's (its volume, mounted read-only in this
container only: the model's own container never sees it).

    python -m pier.fetch --store /store/artifacts --digest <sha256> --into /pier
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pier.artifacts import Store, checked_digest, image_digest, tree_digest


class FetchError(Exception):
    pass


def fetch(store: Store, digest: str, into: Path) -> None:
    try:
        checked_digest(digest)
    except ValueError as exc:
        raise FetchError(str(exc)) from None
    manifest = store.manifest(digest)
    if manifest is None:
        raise FetchError(f"image {digest} is not in the artifact store at {store.root}")
    env = store.env(manifest.env_hash)
    if not env.is_dir():
        raise FetchError(f"the environment {manifest.env_hash} of image {digest} is not in the artifact store")
    for name, source in (
        ("work", store.image(digest) / "code"),
        ("runtime", store.image(digest) / "runtime"),
        ("env", env),
    ):
        target = into / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
    code_digest = tree_digest(into / "work")
    if code_digest != manifest.code_digest:
        raise FetchError(f"the code of image {digest} has digest {code_digest}, not {manifest.code_digest}")
    named = image_digest(manifest.code_digest, manifest.env_hash, manifest.entrypoint)
    if named != digest:
        raise FetchError(f"the manifest of image {digest} names the image {named}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Fetch a model API version's image by digest into a pod.")
    parser.add_argument("--store", type=Path, required=True, help="the artifact store's root")
    parser.add_argument("--digest", required=True)
    parser.add_argument("--into", type=Path, required=True)
    args = parser.parse_args()
    try:
        fetch(Store(args.store), args.digest, args.into)
    except (FetchError, OSError) as exc:
        print(f"fetch: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"fetch: image {args.digest[:12]} checked and unpacked into {args.into}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
