"""Serving mode: a real inference server under load (arrivals, workloads, the load generator, metrics)."""
