"""The Prefect layer: stages as tasks, dispatch to work pools, the flows' parent run, the promotion lock."""
