"""Models in MLflow: logging and resolving them, registered versions, gates, promotion, the champion, serving
wrappers."""
