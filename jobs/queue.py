"""Publishing job messages. A message carries a job id only; the database holds the job."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from celery import Task
from celery import current_app as app
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from core.redis import get_redis
from jobs.models import Job

logger = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per priority step: the queue's own name for the
# default priority, "<queue>\x06\x16<step>" for the others.
_KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)
# A message a worker has fetched stays in kombu's hash "unacked" (delivery tag -> JSON
# [message, exchange, routing key]) until it is acknowledged: reserved behind a busy process,
# running (acks_late), or held by the worker until its ETA (a countdown); the sorted set
# "unacked_index" says when it was fetched (delivery tag -> Unix time). The lists alone miss
# those (kombu/transport/redis.py, QoS.append).
_KOMBU_UNACKED_KEY = "unacked"
_KOMBU_UNACKED_INDEX_KEY = "unacked_index"

# Messages buffered per Redis round trip (one pipelined LPUSH batch).
PUBLISH_BATCH_SIZE = 1000
# A publish fails fast when the broker is unreachable (kombu's default retries forever): the
# job row is the durable outbox, and the dispatcher publishes what could not be published.
PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

# Batch messages (scheduled work) wait on a list of their own that workers read after the
# default one: a manual trigger, a retry or a batch's confirmation is never stuck behind a
# backlog of a million scheduled payments. (kombu's Redis priorities: 0, the default, first.)
BATCH_PRIORITY = _KOMBU_PRIORITY_STEPS[0]


@dataclass
class _PaymentTasks:
    process: Task | None = None
    settle_batch: Task | None = None


# The tasks that run a job: defined by the engine above this app, which registers them when
# Django starts (``autopay.apps``), so this layer publishes them without naming a higher one.
_payment_tasks = _PaymentTasks()


def register_payment_tasks(*, process: Task, settle_batch: Task) -> None:
    """Name the task that processes one job and the one that settles a list of jobs."""
    _payment_tasks.process = process
    _payment_tasks.settle_batch = settle_batch


def payment_task_names() -> tuple[str, str]:
    """The registered (process one job, settle a batch) task names."""
    process, settle_batch = _payment_tasks.process, _payment_tasks.settle_batch
    if process is None or settle_batch is None:
        raise ImproperlyConfigured(
            "no payment tasks are registered: is the autopay app in INSTALLED_APPS?"
        )
    return process.name, settle_batch.name


def publish_jobs(job_ids: Iterable[UUID | str], *, countdown: float | None = None) -> int:
    """Publish one process message per job, in pipelined batches over one connection.

    Messages are the Celery task-protocol-2 messages `send_task` would build, published
    straight to the queue (the anonymous exchange routes by queue name), so no exchange
    binding lookup or extra round trip is paid per message: the scan publishes 100k jobs.
    """
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    process_task, _ = payment_task_names()
    eta = None
    if countdown:
        eta = timezone.now() + timedelta(seconds=countdown)
    published = 0
    template: Any = None
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH_SIZE):
        for raw_id in job_ids:
            job_id, task_id = str(raw_id), str(uuid.uuid4())
            if template is None:
                # Celery builds the first message; the others differ only by their ids, so
                # they reuse its headers instead of paying as_task_v2's cost each time.
                template = app.amqp.as_task_v2(task_id, process_task, args=(job_id,), eta=eta)
                headers, properties, body = template.headers, template.properties, template.body
            else:
                args = (job_id,)
                headers = {
                    **template.headers,
                    "id": task_id,
                    "root_id": task_id,
                    "argsrepr": repr(args),
                }
                properties = {**template.properties, "correlation_id": task_id}
                body = (args, template.body[1], template.body[2])
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                serializer="json",
                headers=headers,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                **properties,
            )
            published += 1
    return published


def publish_scheduled_jobs(job_ids: Iterable[UUID | str]) -> int:
    """Publish scheduled work (the scan's and dunning's jobs): one settle-batch message per
    AUTOPAY_SETTLEMENT_BATCH_SIZE job ids, or one process message per job when that is 1.
    Returns the number of jobs published."""
    ids = [str(job_id) for job_id in job_ids]
    size = settings.AUTOPAY_SETTLEMENT_BATCH_SIZE
    if size <= 1:
        return publish_jobs(ids)
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    _, settle_batch_task = payment_task_names()
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH_SIZE):
        for start in range(0, len(ids), size):
            chunk = ids[start : start + size]
            task_id = str(uuid.uuid4())
            message = app.amqp.as_task_v2(task_id, settle_batch_task, args=(chunk,))
            producer.publish(
                message.body,
                exchange="",
                routing_key=queue,
                serializer="json",
                headers=message.headers,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
                priority=BATCH_PRIORITY,
                **message.properties,
            )
    return len(ids)


def publish_jobs_on_commit(job_ids: Iterable[UUID | str]) -> None:
    """Publish after the surrounding transaction commits, so a worker never sees a missing row.

    A failed publish is logged, not raised: the job row is already durable (it is queued once
    committed). Its message is marked unpublished and the dispatcher publishes it as soon as
    the broker answers again.
    """
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return

    def _publish() -> None:
        publish_or_mark_unpublished(ids)

    transaction.on_commit(_publish)


def publish_or_mark_unpublished(job_ids: list[str]) -> int:
    """Publish the jobs' messages; on failure, mark them unpublished for the dispatcher.
    Returns how many messages were published."""
    try:
        return publish_jobs(job_ids)
    except Exception as exc:
        logger.warning(
            "publishing %d job message(s) failed (%s); the dispatcher will publish them",
            len(job_ids),
            type(exc).__name__,
        )
        jobs_mark_unpublished(job_ids)
        return 0


def jobs_mark_unpublished(job_ids: Iterable[UUID | str]) -> None:
    """Their message never reached the broker: the dispatcher publishes them when they are
    due. Best effort: when the database is unreachable too, the lost-message check finds them
    (published long ago, never claimed, not in the broker's queue)."""
    ids = [str(job_id) for job_id in job_ids]
    try:
        Job.objects.filter(pk__in=ids, status__in=[Job.Status.WAITING, Job.Status.DELAYED]).update(
            enqueued_at=None
        )
    except Exception:
        logger.warning("could not mark %d job(s) unpublished", len(ids), exc_info=True)


def broker_is_redis() -> bool:
    """Whether the broker is a Redis whose queue lists a plain client can measure (not a
    sentinel:// or non-Redis broker)."""
    scheme = str(settings.CELERY_BROKER_URL).split("://", 1)[0].lower()
    return scheme in ("redis", "rediss", "unix")


def _broker_key(name: str) -> str:
    """A kombu key as it is stored (kombu prefixes every key with ``global_keyprefix``)."""
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    return f"{options.get('global_keyprefix', '')}{name}"


def _queue_lists() -> list[tuple[str, int]]:
    """The queue's lists on the broker, each with the most jobs one of its messages carries
    (a batch message AUTOPAY_SETTLEMENT_BATCH_SIZE, any other one)."""
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    batch = settings.AUTOPAY_SETTLEMENT_BATCH_SIZE
    return [(_broker_key(queue), 1)] + [
        (
            _broker_key(f"{queue}{_KOMBU_PRIORITY_SEPARATOR}{step}"),
            batch if step == BATCH_PRIORITY else 1,
        )
        for step in _KOMBU_PRIORITY_STEPS
    ]


def _message_job_ids(message: Mapping[str, Any]) -> list[str]:
    """The job ids a message carries: one for a process message, a batch's for a settle-batch
    message, none for any other task (confirmations, scans) or a message we cannot read."""
    headers = message.get("headers") or {}
    task = headers.get("task")
    process_task, settle_batch_task = payment_task_names()
    if task not in (process_task, settle_batch_task):
        return []
    try:
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]  # protocol 2: [args, kwargs, embed]
    except (KeyError, IndexError, TypeError, ValueError):
        return []
    if task == process_task:
        return [str(first)]
    return [str(job_id) for job_id in first]


def _read_unacked(pipe: Any) -> None:
    """Queue the reads of the unacknowledged messages and of when each was fetched."""
    pipe.hgetall(_broker_key(_KOMBU_UNACKED_KEY))
    pipe.zrange(_broker_key(_KOMBU_UNACKED_INDEX_KEY), 0, -1, withscores=True)


def _eta(message: Mapping[str, Any]) -> float:
    """The message's ETA as Unix time (0 without one)."""
    eta = (message.get("headers") or {}).get("eta")
    if not eta:
        return 0.0
    try:
        moment = datetime.fromisoformat(str(eta))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _held_job_ids(
    entries: Mapping[bytes, bytes], fetched: Iterable[tuple[bytes, float]]
) -> list[str]:
    """The job ids of our queue's unacknowledged messages (the hash holds every queue's) that
    a live worker may still hold.

    A worker holds a message until its ETA at most, plus what the tasks ahead of it may take
    (CELERY_TASK_TIME_LIMIT for each prefetched message). One fetched longer ago than that
    belongs to a worker that died without giving it back (kombu restores it only after
    CELERY_VISIBILITY_TIMEOUT, an hour): its jobs are not held, so they are republished.
    """
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    patience = settings.CELERY_TASK_TIME_LIMIT * max(settings.CELERY_WORKER_PREFETCH_MULTIPLIER, 1)
    fetched_at = dict(fetched)
    now = time.time()
    job_ids: list[str] = []
    for tag, entry in entries.items():
        try:
            message, _exchange, routing_key = json.loads(entry)
        except (TypeError, ValueError):
            continue
        if routing_key != queue or not isinstance(message, dict):
            continue
        if now > max(fetched_at.get(tag, now), _eta(message)) + patience:
            continue
        job_ids.extend(_message_job_ids(message))
    return job_ids


def broker_queue_length(*, timeout: float = 1.0) -> int | None:
    """Messages waiting in the Celery queue on the broker, every priority step counted; None
    when the broker is not a Redis or does not answer."""
    if not broker_is_redis():
        return None
    try:
        client = get_redis(timeout=timeout, url=settings.CELERY_BROKER_URL)
        with client.pipeline(transaction=False) as pipe:
            for name, _weight in _queue_lists():
                pipe.llen(name)
            return sum(int(length) for length in pipe.execute())
    except Exception:
        logger.warning("broker queue length unavailable", exc_info=True)
        return None


def broker_queued_jobs(*, timeout: float = 1.0) -> int | None:
    """At most how many jobs' messages the broker holds for our queue: those waiting on its
    lists (a batch message counting AUTOPAY_SETTLEMENT_BATCH_SIZE, an upper bound) and those
    fetched by workers and not yet acknowledged (counted exactly). One atomic read, so that a
    message moving between a list and the unacked hash meanwhile is not missed; None when not
    measurable."""
    if not broker_is_redis():
        return None
    lists = _queue_lists()
    try:
        client = get_redis(timeout=timeout, url=settings.CELERY_BROKER_URL)
        with client.pipeline(transaction=True) as pipe:
            for name, _weight in lists:
                pipe.llen(name)
            _read_unacked(pipe)
            *lengths, unacked, fetched = pipe.execute()
    except Exception:
        logger.warning("broker queue length unavailable", exc_info=True)
        return None
    weights = [weight for _name, weight in lists]
    waiting = sum(int(length) * weight for length, weight in zip(lengths, weights, strict=True))
    return waiting + len(_held_job_ids(unacked, fetched))


def broker_jobs_without_message(job_ids: Iterable[str], *, timeout: float = 5.0) -> set[str] | None:
    """Those of ``job_ids`` that no message on the broker carries: not on the queue's lists,
    not fetched by a worker (reserved, running or held until its countdown). None when the
    broker cannot be read.

    Reads every message of the queue (one atomic read), so it is for when the counts do not
    explain the waiting jobs, not for every pass. A message a worker has popped from a list
    but not yet recorded as unacknowledged (a moment inside the worker) is in neither: the
    unacked hash is read once more for the jobs found missing.
    """
    if not broker_is_redis():
        return None
    wanted = {str(job_id) for job_id in job_ids}
    if not wanted:
        return set()
    try:
        client = get_redis(timeout=timeout, url=settings.CELERY_BROKER_URL)
        with client.pipeline(transaction=True) as pipe:
            for name, _weight in _queue_lists():
                pipe.lrange(name, 0, -1)
            _read_unacked(pipe)
            *lists, unacked, fetched = pipe.execute()
        held = set(_held_job_ids(unacked, fetched))
        for entries in lists:
            for entry in entries:
                try:
                    message = json.loads(entry)
                except (TypeError, ValueError):
                    continue
                if isinstance(message, dict):
                    held.update(_message_job_ids(message))
        missing = wanted - held
        if missing:
            with client.pipeline(transaction=True) as pipe:
                _read_unacked(pipe)
                missing -= set(_held_job_ids(*pipe.execute()))
    except Exception:
        logger.warning("broker messages unavailable", exc_info=True)
        return None
    return missing
