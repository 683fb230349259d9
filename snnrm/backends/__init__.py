"""Hardware backends: where chips, cores and their telemetry come from (simulated or real)."""
