"""The roof: settings, the Celery app, root URLs, the API router and wsgi (nothing imports it)."""

from config.celery import app as celery_app

__all__ = ("celery_app",)
