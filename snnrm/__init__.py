"""snnrm: telemetry-driven resource manager for neuromorphic (SNN) hardware on Kubernetes."""

__version__ = "0.1.0"
