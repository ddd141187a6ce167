"""Retry failed jobs by id, by error code, or all of them (each retry is a new job on the same
payment, through ``jobs.services.job_retry``, exactly like the API and the admin)."""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet
from tqdm import tqdm

from jobs import services
from jobs.models import Job
from subscriptions.models import Payment, Subscription

CHARGEABLE = Q(
    subscription__auto_pay_enabled=True,
    subscription__status__in=[Subscription.Status.ACTIVE, Subscription.Status.PAST_DUE],
)
REASON_NOT_FOUND = "job not found"
REASON_NOT_FAILED = "job is not failed"
REASON_SUPERSEDED = "a newer job exists for the same payment"
REASON_PAID = "payment already completed"
REASON_NOT_CHARGEABLE = "subscription not chargeable (paused, canceled, unpaid or auto-pay off)"
REASON_OVER_LIMIT = "over --limit"
DRY_RUN_LISTED = 20


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise CommandError(f"--limit must be a positive integer, not {value!r}.")
    return number


def _job_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise CommandError(f"--job expects a job id (a UUID), not {value!r}.") from exc


def annotated_failed_jobs() -> QuerySet[Job]:
    """Failed jobs annotated with why a bulk retry would leave them alone."""
    newer = Job.objects.filter(payment=OuterRef("payment"), created_at__gt=OuterRef("created_at"))
    return Job.objects.filter(status=Job.Status.FAILED).annotate(
        superseded=Exists(newer),
        paid=ExpressionWrapper(
            Q(payment__status=Payment.Status.COMPLETED), output_field=BooleanField()
        ),
        chargeable=ExpressionWrapper(CHARGEABLE, output_field=BooleanField()),
    )


class Command(BaseCommand):
    help = (
        "Retry failed jobs: --job ID (repeatable), --error-code CODE (repeatable) or --all. "
        "In bulk, only the latest failed job of each unpaid payment of a chargeable "
        "subscription is retried; everything skipped is counted with its reason."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--job",
            dest="job_ids",
            action="append",
            default=[],
            metavar="ID",
            help="Retry this failed job (repeat for several).",
        )
        parser.add_argument(
            "--error-code",
            dest="error_codes",
            action="append",
            default=[],
            metavar="CODE",
            help="Retry failed jobs with this error code (repeat for several).",
        )
        parser.add_argument("--all", action="store_true", help="Retry every failed job.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Show what would be retried; change nothing."
        )
        parser.add_argument(
            "--limit", metavar="N", help="Retry at most N jobs (oldest failures first)."
        )
        parser.add_argument(
            "--no-progress", action="store_true", help="No progress bar (also off without a TTY)."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        job_ids = [_job_id(value) for value in options["job_ids"]]
        error_codes = [code.strip() for code in options["error_codes"]]
        if any(not code for code in error_codes):
            raise CommandError("--error-code needs a non-empty code.")
        modes = [bool(job_ids), bool(error_codes), bool(options["all"])]
        if sum(modes) != 1:
            raise CommandError("Choose exactly one of --job ID, --error-code CODE or --all.")
        limit = _positive_int(str(options["limit"])) if options["limit"] is not None else None

        skipped: Counter[str] = Counter()
        if job_ids:
            candidates = self._select_by_id(job_ids, skipped)
        else:
            candidates = self._select_in_bulk(error_codes, skipped)
        if limit is not None and len(candidates) > limit:
            skipped[REASON_OVER_LIMIT] += len(candidates) - limit
            candidates = candidates[:limit]

        if options["dry_run"]:
            self._report_dry_run(candidates, skipped, verbosity=options["verbosity"])
            return
        retried = self._retry(candidates, skipped, progress=not options["no_progress"])
        self.stdout.write(self.style.SUCCESS(f"Retried {retried} failed job(s)."))
        self._report_skipped(skipped)

    def _select_by_id(self, job_ids: list[uuid.UUID], skipped: Counter[str]) -> list[uuid.UUID]:
        """Explicit ids, in the order given; each one is checked and skipped with a reason."""
        found = {
            job.pk: job
            for job in Job.objects.filter(pk__in=job_ids).annotate(
                paid=ExpressionWrapper(
                    Q(payment__status=Payment.Status.COMPLETED), output_field=BooleanField()
                ),
                chargeable=ExpressionWrapper(CHARGEABLE, output_field=BooleanField()),
            )
        }
        candidates: list[uuid.UUID] = []
        for job_id in dict.fromkeys(job_ids):
            job = found.get(job_id)
            reason = None
            if job is None:
                reason = REASON_NOT_FOUND
            elif job.status != Job.Status.FAILED:
                reason = f"{REASON_NOT_FAILED} (it is {job.status})"
            elif job.paid:  # type: ignore[attr-defined]
                reason = REASON_PAID
            elif not job.chargeable:  # type: ignore[attr-defined]
                reason = REASON_NOT_CHARGEABLE
            if reason is None:
                candidates.append(job_id)
            else:
                skipped[reason] += 1
                self.stdout.write(f"Skipping {job_id}: {reason}.", style_func=self.style.WARNING)
        return candidates

    def _select_in_bulk(self, error_codes: list[str], skipped: Counter[str]) -> list[uuid.UUID]:
        """The latest failed job of each unpaid payment, oldest failure first."""
        queryset = annotated_failed_jobs()
        if error_codes:
            queryset = queryset.filter(error_code__in=error_codes)
        for reason, condition in (
            (REASON_SUPERSEDED, Q(superseded=True)),
            (REASON_PAID, Q(superseded=False, paid=True)),
            (REASON_NOT_CHARGEABLE, Q(superseded=False, paid=False, chargeable=False)),
        ):
            count = queryset.filter(condition).count()
            if count:
                skipped[reason] += count
        return list(
            queryset.filter(Q(superseded=False, paid=False, chargeable=True))
            .order_by("finished_at", "created_at")
            .values_list("pk", flat=True)
        )

    def _retry(self, candidates: list[uuid.UUID], skipped: Counter[str], *, progress: bool) -> int:
        stream = getattr(self.stderr, "_out", sys.stderr)
        show_bar = progress and len(candidates) > 1 and stream.isatty()
        retried = 0
        with tqdm(
            total=len(candidates), desc="Retrying", unit="job", file=stream, disable=not show_bar
        ) as bar:
            for job_id in candidates:
                job = Job.objects.select_related("payment").filter(pk=job_id).first()
                try:
                    if job is None:
                        raise services.JobNotRetryable(REASON_NOT_FOUND)
                    services.job_retry(job=job)
                except (services.JobNotRetryable, services.JobAlreadyOpen) as exc:
                    # Changed since it was selected (a worker, the scheduler or another operator).
                    reason = (
                        "payment already has a job in flight"
                        if isinstance(exc, services.JobAlreadyOpen)
                        else str(exc)
                    )
                    skipped[reason] += 1
                else:
                    retried += 1
                bar.update(1)
        return retried

    def _report_dry_run(
        self, candidates: list[uuid.UUID], skipped: Counter[str], *, verbosity: int
    ) -> None:
        self.stdout.write(
            self.style.SUCCESS(
                f"Dry run: would retry {len(candidates)} failed job(s); nothing was changed."
            )
        )
        listed = candidates if verbosity >= 2 else candidates[:DRY_RUN_LISTED]
        jobs = Job.objects.in_bulk(listed)
        for job_id in listed:
            job = jobs[job_id]
            self.stdout.write(
                f"  {job.pk}  {job.error_code or '-':<24}  subscription {job.subscription_id}"
            )
        if len(listed) < len(candidates):
            self.stdout.write(f"  ... and {len(candidates) - len(listed)} more (--verbosity 2).")
        self._report_skipped(skipped, prefix="Would skip")

    def _report_skipped(self, skipped: Counter[str], *, prefix: str = "Skipped") -> None:
        total = sum(skipped.values())
        if not total:
            self.stdout.write(f"{prefix} 0.")
            return
        self.stdout.write(f"{prefix} {total}:", style_func=self.style.WARNING)
        for reason, count in skipped.most_common():
            self.stdout.write(f"  {count:>6}  {reason}")
