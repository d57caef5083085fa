"""Authentication and role checks: every route declares who may call it, here, once.

``@route(bp, path, methods=..., roles=...)`` registers a Blueprint route and records its
roles on the view, so a test can list every route with its roles (and fail on a route
registered with plain ``bp.route``, which declares none). The wrapper authenticates the
bearer token, checks the role (a ``vip_hospital`` route also checks the hospital's
membership), sets the caller for ``current_principal()`` and hands domain errors to the
middleware. Ownership is checked by the services, which get the principal.

Example
-------
>>> @route(bp, "/v1/me", methods=["GET"], roles=SIGNED_IN)  # doctest: +SKIP
... def me() -> dict: return profiles.view(current_principal())
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from chalice import Blueprint, ChaliceUnhandledError

from chalicelib.accounts.roles import ANON, HOSPITAL, SIGNED_IN, VIP_HOSPITAL, Principal
from chalicelib.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


View = TypeVar("View", bound="Callable[..., Any]")

ALLOWED_ROLES_ATTRIBUTE = "allowed_roles"
KNOWN_ROLES = frozenset({ANON, VIP_HOSPITAL, *SIGNED_IN})

_principal: ContextVar[Principal | None] = ContextVar("principal", default=None)


class EscalatedApiError(ChaliceUnhandledError):
    """Carries an ``ApiError`` past Chalice (which would turn it into a 500) to the middleware."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def current_principal() -> Principal:
    """The authenticated caller of the running request (routes that allow ``anon`` get none)."""
    principal = _principal.get()
    if principal is None:
        raise RuntimeError("current_principal() called on a route that allows anonymous callers")
    return principal


def unauthorized(code: str = "unauthorized", message: str = "Sign in first") -> ApiError:
    return ApiError(401, code, message, "请先登录")


def principal_of(authorization: str | None) -> Principal | None:
    """The caller named by an ``Authorization: Bearer <token>`` header; None when there is none."""
    from chalicelib.accounts import tokens

    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("invalid_token", "The Authorization header must be 'Bearer <access token>'")
    return tokens.verify_access_token(token.strip())


def authorize(roles: frozenset[str], authorization: str | None, now: datetime) -> Principal | None:
    """The caller, if ``roles`` admit them; raises 401/403 ``ApiError`` otherwise."""
    from chalicelib.accounts import memberships

    if ANON in roles:
        # An open route ignores a stale token: a client refreshing after its access token
        # expired still sends the old one.
        try:
            return principal_of(authorization)
        except ApiError:
            return None
    principal = principal_of(authorization)
    if principal is None:
        raise unauthorized()
    if principal.role in roles:
        return principal
    if principal.role == HOSPITAL and VIP_HOSPITAL in roles:
        if memberships.is_active(principal.user_id, now):
            return principal
        raise ApiError(
            403,
            "membership_required",
            "A VIP membership is required to see and invite every anesthesiologist",
            "需要开通 VIP 会员才能查看和邀请全部麻醉医生",
        )
    raise ApiError(403, "forbidden", "Your role may not do this", "您的角色无权执行此操作", {"role": principal.role})


def route(
    bp: Blueprint, path: str, *, methods: list[str], roles: Iterable[str], **options: Any
) -> Callable[[View], View]:
    """Register ``view`` as a route of ``bp`` that only ``roles`` may call."""
    admitted = frozenset(roles)
    unknown = admitted - KNOWN_ROLES
    if not admitted or unknown:
        raise ValueError(f"route {path} needs known roles, got {sorted(admitted)!r}")

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            reset = None
            try:
                authorization = (bp.current_request.headers or {}).get("authorization")
                reset = _principal.set(authorize(admitted, authorization, datetime.now(UTC)))
                return view(*args, **kwargs)
            except ApiError as error:
                raise EscalatedApiError(error) from error
            finally:
                if reset is not None:
                    _principal.reset(reset)

        setattr(guarded, ALLOWED_ROLES_ATTRIBUTE, admitted)
        bp.route(path, methods=methods, **options)(guarded)
        return guarded  # type: ignore[return-value]

    return decorate
