"""The stage contract: a stage's cache key, its work folder and lock, its MLflow child run, where runs are tracked."""
