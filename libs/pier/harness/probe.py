"""`python -m pier.harness.probe`: a pod's startup, readiness and liveness probe (the kubernetes driver's
exec probe). Asks the harness's /ping with the instance secret from the container's environment, so
the secret never has to be written into the pod spec as an httpGet probe's header would be.
Exit status 0 when /ping answers 200 within PIER_PROBE_TIMEOUT seconds, 1 otherwise."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from pier.http import SECRET_HEADER


def main() -> int:
    port = os.environ.get("PIER_PORT", "8080")
    # Where the harness listens (PIER_HOST), loopback when that is every address.
    host = os.environ.get("PIER_HOST", "") or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else host
    request = urllib.request.Request(
        f"http://{host}:{port}/ping", headers={SECRET_HEADER: os.environ.get("PIER_INSTANCE_SECRET", "")}
    )
    try:
        with urllib.request.urlopen(request, timeout=float(os.environ.get("PIER_PROBE_TIMEOUT", "5"))) as answer:
            return 0 if answer.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe: /ping failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
