"""Shared by every stage: the config schema and its loader, errors, paths, lineage, secrets, tag keys, stage names."""
