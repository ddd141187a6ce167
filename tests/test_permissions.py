"""Who may change what: owners their own data; staff read everything but change another user's
objects only with the admin's model permission; non-staff never see fleet-wide figures."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from jobs.models import Job
from subscriptions.models import Subscription
from tests.conftest import _client_for
from tests.factories import SubscriptionFactory, UserFactory, failed_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def support_agent() -> Any:
    """Staff without any model permission: reads everything, changes nothing of others."""
    return UserFactory.create(is_staff=True, is_superuser=False)


def _writes(client: APIClient, subscription: Subscription, job: Job) -> dict[str, Any]:
    url = f"/api/subscriptions/{subscription.pk}"
    return {
        "patch": client.patch(url, {"service_name": "renamed"}, format="json"),
        "pause": client.post(f"{url}/pause"),
        "cancel": client.post(f"{url}/cancel"),
        "trigger": client.post(f"{url}/trigger-payment"),
        "retry": client.post(f"/api/jobs/{job.pk}/retry"),
    }


def test_staff_without_model_permissions_is_read_only(user: Any, support_agent: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    job = failed_job(subscription)
    client = _client_for(support_agent)

    assert client.get(f"/api/subscriptions/{subscription.pk}").status_code == 200
    assert client.get(f"/api/jobs/{job.pk}").status_code == 200
    for name, response in _writes(client, subscription, job).items():
        assert response.status_code == 403, name
        body = response.json()
        assert body["success"] is False and body["error"], name
    subscription.refresh_from_db()
    assert (subscription.service_name, subscription.status) != ("renamed", "paused")
    assert subscription.status == Subscription.Status.ACTIVE
    assert Job.objects.count() == 1


def test_staff_with_the_admins_permission_may_change(user: Any, support_agent: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    support_agent.user_permissions.add(
        Permission.objects.get(codename="change_subscription"),
        Permission.objects.get(codename="change_job"),
    )
    client = _client_for(support_agent)

    response = client.patch(
        f"/api/subscriptions/{subscription.pk}", {"service_name": "renamed"}, format="json"
    )

    assert response.status_code == 200, response.content
    subscription.refresh_from_db()
    assert subscription.service_name == "renamed"
    job = failed_job(subscription)
    assert client.post(f"/api/jobs/{job.pk}/retry").status_code == 200


def test_owners_change_their_own_data_without_model_permissions(api: APIClient, user: Any) -> None:
    subscription = SubscriptionFactory.create(owner=user)
    response = api.post(f"/api/subscriptions/{subscription.pk}/pause")
    assert response.status_code == 200, response.content


def test_queue_length_is_for_staff_only(api: APIClient, staff_api: APIClient) -> None:
    assert api.get("/api/jobs/stats").json()["data"]["queueLength"] is None
    assert isinstance(staff_api.get("/api/jobs/stats").json()["data"]["queueLength"], int)


def test_metrics_are_closed_without_a_token(settings: Any, client: Client) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = False
    assert client.get("/metrics").status_code == 403

    settings.METRICS_PUBLIC = True
    assert client.get("/metrics").status_code == 200

    settings.METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    authorized = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert authorized.status_code == 200
