"""Metrics: the hub that gathers every worker's reports, its HTTP server (dashboard, JSON API,
Prometheus) and the Prometheus text. See docs/metrics.md."""
