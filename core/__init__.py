"""The floor: the shared library every app may use (the error envelope, SQL helpers, Redis,
health registry, filters, export, limits, permissions, idempotency, networks). It imports
no app of the project."""
