"""The data plane: routes invocations to ready instances (see app.py for the HTTP surface)."""
