"""The routes of routes.yaml that live in a second file; `predict` is the module already loaded."""

from collections import Counter

import predict

POSITIVE = {"good", "great", "fine", "happy"}


def classify(text: str, threshold: float) -> dict[str, object]:
    """Positional route POST /classify: called as classify(text, threshold), in template order."""
    words = text.lower().split()
    share = sum(word in POSITIVE for word in words) / max(len(words), 1)
    return {"positive": share >= threshold, "share": share}


def stats(top: int) -> dict[str, object]:
    """GET /stats?top=N: the query string is parsed by the template's types."""
    return {
        "calls": predict.MODEL["calls"],
        "loaded_at": predict.MODEL["loaded_at"],
        "top": Counter(POSITIVE).most_common(top),
    }
