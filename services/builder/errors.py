"""The one kind of failure a build reports to its user instead of raising to the bus."""


class BuildError(Exception):
    """An expected failure (bad source, missing function, import or install error): its message,
    one line, becomes the BuildFailed reason. Anything else is infrastructure and is retried."""
