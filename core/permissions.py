"""Who may change what through the API.

Everyone reads and changes their own data (querysets are scoped to the requesting user).
Staff also see every user's data; changing another user's object needs the same Django model
permission as the admin page (``<app>.change_<model>``), so a staff account without model
permissions is read-only on other users' data.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, IsAuthenticated
from rest_framework.request import Request


def object_owner_id(obj: Any) -> Any:
    """The id of the user whose money the object is about (subscription, payment, job, wallet)."""
    if hasattr(obj, "owner_id"):
        return obj.owner_id
    subscription = getattr(obj, "subscription", None)
    return getattr(subscription, "owner_id", None)


class OwnerOrModelPermission(IsAuthenticated):
    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        if request.method in SAFE_METHODS:
            return True
        user = request.user
        if object_owner_id(obj) == user.pk:
            return True
        meta = obj._meta
        return bool(user.is_staff and user.has_perm(f"{meta.app_label}.change_{meta.model_name}"))
