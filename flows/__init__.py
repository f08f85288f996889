"""Prefect flows, the `alignflow` CLI and the stage entry points: they compose `tasks`, top to bottom."""
