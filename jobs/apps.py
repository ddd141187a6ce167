from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Payment jobs"

    def ready(self) -> None:
        from django.contrib import admin

        from jobs import dashboard, dispatcher  # noqa: F401  (connects the worker's dispatcher)

        # The operator dashboard under /admin/dashboard/ on the default admin site.
        dashboard.install(admin.site)
