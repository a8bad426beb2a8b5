"""The data plane's own HTTP/1.1 code: the lean server (`server`), the client to instances
(`client`) and the limits both enforce (`limits`). Shipped into model images with the harness, so
it imports nothing but the standard library, httptools and msgspec."""

# The per-instance secret the gateway and the monitor send, and the harness checks, so an instance's
# port answers only the platform (docs/security.md).
SECRET_HEADER = "X-Pier-Instance-Secret"
