"""Routes with typed parameter templates, proxiML style: see routes.yaml.

Deploy it with its routes (platform started with `make up`, from the repository root):

    .venv/bin/pier deploy examples/routes --name routes --file predict.py --function predict \
        --routes examples/routes/routes.yaml

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
    """Keyword route POST /predict (also the Domino-style /model endpoint)."""
    MODEL["calls"] += 1
    return {"value": 2 * x + y}
