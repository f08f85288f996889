"""Model-side code: loading, the tiny demo model, generation, scoring and loss maths. No Prefect, no MLflow."""
