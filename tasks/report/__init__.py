"""The comparison report: its plots and its HTML page, pure functions of what a pipeline run measured."""
