"""The smallest model API: module-level state is created once, when the instance starts."""

import time

LOADED_AT = time.time()  # stands in for loading a model's weights: done once, not per call


def predict(name: str = "world") -> dict:
    return {"greeting": f"Hello, {name}!", "loaded_at": LOADED_AT}
