"""A simulated Kubernetes control plane (API server, kubelet) for tests on machines without a cluster."""
