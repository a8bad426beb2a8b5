"""Named parameters, `predict(x, y, z)`: call it with `{"data": {...}}` or `{"parameters": [...]}`.

Deploy and call it (platform started with `make up`, from the repository root):

    .venv/bin/pier deploy examples/named_parameters --name named-parameters --file predict.py --function predict
    curl -s -X POST http://127.0.0.1:8000/models/named-parameters/latest/model \
         -H 'Content-Type: application/json' -d '{"data": {"x": 1, "y": 2, "z": 3}}'
    curl -s -X POST http://127.0.0.1:8000/models/named-parameters/latest/model \
         -H 'Content-Type: application/json' -d '{"parameters": [1, 2, 3]}'
"""


def predict(x: float, y: float, z: float = 0.0) -> dict[str, float]:
    return {"sum": x + y + z, "product": x * y * z}
