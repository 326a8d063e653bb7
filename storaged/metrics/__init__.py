"""Prometheus metrics of one array (``storaged --metrics-listen`` / ``metrics.listen``).

- ``iostats``   per-LUN counters and latency histogram, updated on the I/O path (no library calls)
- ``snapshot``  what a scrape reports, read from the running array on its event loop
- ``collector`` the metric families built from a snapshot (names in docs/metrics.md)
- ``server``    the per-array registry and its HTTP endpoint

Only ``iostats`` is imported by the I/O path; the rest loads when metrics are configured.
"""
