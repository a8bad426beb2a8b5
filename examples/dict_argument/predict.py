"""One dict argument, `predict(features)`: send the dict as the only item of `"parameters"`.

Deploy and call it (platform started with `make up`, from the repository root):

    .venv/bin/pier deploy examples/dict_argument --name dict-argument --file predict.py --function predict
    curl -s -X POST http://127.0.0.1:8000/models/dict-argument/latest/model \
         -H 'Content-Type: application/json' -d '{"parameters": [{"x": 1, "y": 2, "z": 3}]}'
"""

WEIGHTS = {"x": 0.5, "y": 0.25, "z": 0.25}  # loaded once, when the instance starts


def predict(features: dict[str, float]) -> dict[str, object]:
    score = sum(WEIGHTS[name] * value for name, value in features.items() if name in WEIGHTS)
    return {"score": score, "ignored": sorted(set(features) - set(WEIGHTS))}
