"""API tokens: stored hashed (django-rest-knox), shown once, with an expiry and revocation.

A token is answered once, when it is created; the database keeps its SHA-512 digest and its
first characters (the *prefix*, which names it in lists and revocation). Clients send it as
``Authorization: Token <token>``, the header of the baseline.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth import authenticate, logout, user_logged_in, user_logged_out
from django.db.models import Q, QuerySet
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from knox.crypto import hash_token
from knox.models import AuthToken
from knox.settings import CONSTANTS, knox_settings
from rest_framework import exceptions, generics, mixins, serializers, status
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

_DEFAULT: Any = object()


def token_label(token: AuthToken) -> str:
    """A token as the audit log and the admin name it: its prefix and user. knox's own
    ``str`` shows the digest, which is secret enough to be excluded from the audit."""
    return f"{token.token_key} : {token.user}"


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """knox's ``Authorization: Token <token>`` in the schema, named as the baseline's was."""

    target_class = "knox.auth.TokenAuthentication"
    name = "tokenAuth"
    priority = 1  # over drf-spectacular's own knox extension ("knoxApiToken")

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return dict(
            build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Token")
        )


# --- issuing tokens (API, management commands) -------------------------------------------------


def default_ttl() -> timedelta | None:
    """The lifetime of a new token (``API_TOKEN_TTL_HOURS``); ``None`` = no expiry."""
    ttl: timedelta | None = knox_settings.TOKEN_TTL
    return ttl


def issue_token(user: Any, ttl: timedelta | None = _DEFAULT) -> tuple[AuthToken, str]:
    """A new token of ``user``: the row (digest and prefix only) and the token, to show once."""
    instance, token = AuthToken.objects.create(
        user=user, expiry=default_ttl() if ttl is _DEFAULT else ttl
    )
    return instance, token


def install_token(user: Any, token: str, ttl: timedelta | None = _DEFAULT) -> AuthToken:
    """Make a token chosen elsewhere (the development runner's) valid for ``user``.

    Idempotent: an existing row of this token is kept, its expiry renewed when it has passed.
    """
    if len(token) < 32 or not token.isalnum():
        raise ValueError("a token needs at least 32 letters or digits")
    ttl = default_ttl() if ttl is _DEFAULT else ttl
    expiry = timezone.now() + ttl if ttl is not None else None
    digest = hash_token(token)
    existing = AuthToken.objects.filter(digest=digest).first()
    if existing is not None:
        if existing.user_id != user.pk:
            raise ValueError("this token belongs to another user")
        if existing.expiry is not None and existing.expiry <= timezone.now():
            existing.expiry = expiry
            existing.save(update_fields=["expiry"])
        return existing
    instance = AuthToken(
        digest=digest, token_key=token[: CONSTANTS.TOKEN_KEY_LENGTH], user=user, expiry=expiry
    )
    instance.save(force_insert=True)
    return instance


def live_tokens(user: Any) -> QuerySet[AuthToken]:
    """The tokens of ``user`` that have not expired, newest first."""
    return AuthToken.objects.filter(
        Q(expiry__isnull=True) | Q(expiry__gt=timezone.now()), user_id=user.pk
    ).order_by("-created")


# --- serializers --------------------------------------------------------------------------------


class TokenCreateInputSerializer(serializers.Serializer):
    username = serializers.CharField(required=False, help_text="With `password`, when anonymous.")
    password = serializers.CharField(
        required=False, write_only=True, trim_whitespace=False, style={"input_type": "password"}
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("username")) != bool(attrs.get("password")):
            raise serializers.ValidationError("Send both username and password, or neither.")
        return attrs


class TokenCreatedSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The token: shown this once, never again.")
    prefix = serializers.CharField(help_text="Names the token in lists and revocation.")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True, help_text="null: never expires.")


class TokenSerializer(serializers.Serializer):
    prefix = serializers.CharField(source="token_key")
    created = serializers.DateTimeField()
    expiry = serializers.DateTimeField(allow_null=True)
    current = serializers.SerializerMethodField(help_text="The token of this request.")

    def get_current(self, instance: AuthToken) -> bool:
        request = self.context.get("request")
        auth = getattr(request, "auth", None)
        return isinstance(auth, AuthToken) and auth.digest == instance.digest


# --- views --------------------------------------------------------------------------------------


class TokenListCreateView(mixins.ListModelMixin, generics.GenericAPIView):
    """``/api/auth/tokens``: create a token (shown once) and list the caller's tokens."""

    serializer_class = TokenSerializer

    def get_permissions(self) -> list[BasePermission]:
        # Anyone may try to log in; only a known caller may list.
        if self.request.method == "POST":
            return [AllowAny()]
        return [IsAuthenticated()]

    def get_queryset(self) -> QuerySet[AuthToken]:
        return live_tokens(self.request.user)

    @extend_schema(operation_id="auth_tokens_list", tags=["auth"])
    def get(self, request: Request) -> Response:
        """The caller's tokens: prefix, creation and expiry; never the token itself."""
        return self.list(request)

    @extend_schema(
        operation_id="auth_tokens_create",
        tags=["auth"],
        request=TokenCreateInputSerializer,
        responses={
            201: TokenCreatedSerializer,
            401: OpenApiResponse(description="Wrong username or password, or no caller."),
        },
    )
    def post(self, request: Request) -> Response:
        """A new token for `username`/`password`, or for the session or token caller.

        The answer is the only time the token is shown: the server keeps its digest.
        Repeated wrong passwords lock the username for this address (`AXES_*`)."""
        serializer = TokenCreateInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        username = serializer.validated_data.get("username")
        if username:
            # The Django request: axes counts the failure and flags a lockout on it.
            user = authenticate(
                request._request, username=username, password=serializer.validated_data["password"]
            )
            if user is None:
                raise exceptions.AuthenticationFailed("Wrong username or password.")
            user_logged_in.send(sender=user.__class__, request=request._request, user=user)
        elif request.user.is_authenticated:
            user = request.user
        else:
            raise exceptions.NotAuthenticated("Send a username and password.")
        instance, token = issue_token(user)
        body = TokenCreatedSerializer(
            {
                "token": token,
                "prefix": instance.token_key,
                "created": instance.created,
                "expiry": instance.expiry,
            }
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


class TokenDetailView(APIView):
    """``/api/auth/tokens/<prefix>``: revoke one of the caller's tokens."""

    @extend_schema(
        operation_id="auth_tokens_revoke",
        tags=["auth"],
        parameters=[OpenApiParameter("prefix", str, OpenApiParameter.PATH)],
        request=None,
        responses={204: None, 404: OpenApiResponse(description="No such token of the caller.")},
    )
    def delete(self, request: Request, prefix: str) -> Response:
        """Revoke the caller's token with this prefix; it answers 401 from now on."""
        deleted, _ = AuthToken.objects.filter(user_id=request.user.pk, token_key=prefix).delete()
        if not deleted:
            raise exceptions.NotFound("Token not found.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutView(APIView):
    """``/api/auth/logout``: revoke the token of this request (or end the session)."""

    @extend_schema(operation_id="auth_logout", tags=["auth"], request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        """Revoke the token this request was made with; a session is logged out."""
        if isinstance(request.auth, AuthToken):
            user = request.user
            request.auth.delete()
            user_logged_out.send(sender=user.__class__, request=request._request, user=user)
        else:
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)
