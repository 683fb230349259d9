"""The Kubernetes API side: the client seam, and alert-driven autoscaling hooks (reallocation controller later)."""
