"""The builder: turns an uploaded source into an immutable image (code + Python environment)."""
