"""Run the outbox dispatcher in the foreground (it also runs inside every worker)."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand

from jobs.dispatcher import Dispatcher


class Command(BaseCommand):
    help = (
        "Publish due jobs, take back expired leases and republish lost messages, in a loop "
        "(the dispatcher each worker runs in a thread; several may run side by side)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--interval", type=float, default=None, help="seconds between passes")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args: Any, **options: Any) -> None:
        dispatcher = Dispatcher(interval=options["interval"])
        if options["once"]:
            published = dispatcher.step()
            self.stdout.write(f"published {published} job message(s)")
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: dispatcher.stop())
        dispatcher.run()
