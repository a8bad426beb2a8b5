"""The api's outbox channel: what lifecycle, schedules and labels enqueue on and the relay drains.

A module of its own so that modules lifecycle imports can enqueue without importing lifecycle.
"""

CHANNEL = "api_outbox"
