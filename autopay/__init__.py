"""The payment engine: Celery tasks, scheduler, payment rails, signers, custody and chain access."""
