"""Running training: the driver, its workers' builder, fleet, supervisor, watches, progress and tracking (``python -m deploy.train`` is the entrypoint)."""
