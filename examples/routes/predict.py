"""Routes with typed parameter templates, proxiML style: see routes.yaml.

Deploy it (platform started with `make up`, from the repository root); the folder's routes.yaml is
used, and with no --file only its routes are served, as proxiML's endpoints are:

    .venv/bin/pier deploy examples/routes --name routes --unrestricted

(Add `--file predict.py` to serve the Domino-style /model endpoint beside the routes.)

Call each route; the gateway checks the body (the query string for GET) against the template first:

    curl -s -X POST http://127.0.0.1:8000/models/routes/latest/predict \
         -H 'Content-Type: application/json' -d '{"x": 2, "y": 3}'
    curl -s -X POST http://127.0.0.1:8000/models/routes/latest/classify \
         -H 'Content-Type: application/json' -d '{"text": "a great day", "threshold": 0.1}'
    curl -s 'http://127.0.0.1:8000/models/routes/latest/stats?top=2'
"""

import time

# Loaded once per instance; text.py imports this module and shares the same object.
MODEL = {"loaded_at": time.time(), "calls": 0}


def predict(x: float, y: float = 0.0) -> dict[str, float]:
    """Keyword route POST /predict (and the Domino-style /model endpoint, when deployed with --file)."""
    MODEL["calls"] += 1
    return {"value": 2 * x + y}
