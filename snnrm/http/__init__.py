"""The daemon's HTTP face: metrics, probes, JSON API, status page, simulator control."""
