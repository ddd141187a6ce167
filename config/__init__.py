"""Project configuration: settings, the Celery app, root URLs and health."""

from config.celery import app as celery_app

__all__ = ("celery_app",)
