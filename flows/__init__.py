"""Prefect flows, the `alignflow` CLI and the pipeline config schema."""
