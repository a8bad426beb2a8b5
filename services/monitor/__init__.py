"""Health checks: probes each instance, marks it ready or unhealthy, asks for restarts."""
