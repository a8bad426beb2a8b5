"""A required argument plus `**kwargs`: every other field of `"data"` lands in `kwargs`.

Deploy and call it (platform started with `make up`, from the repository root):

    .venv/bin/pier deploy examples/kwargs --name kwargs --file predict.py --function predict
    curl -s -X POST http://127.0.0.1:8000/models/kwargs/latest/model \
         -H 'Content-Type: application/json' -d '{"data": {"x": 1, "y": 2, "z": 3}}'
"""

from typing import Any


def predict(x: float, **kwargs: Any) -> dict[str, Any]:
    return {"x": x, "others": kwargs, "total": x + sum(v for v in kwargs.values() if isinstance(v, int | float))}
