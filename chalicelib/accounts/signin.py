"""Sign-up and sign-in: phone + password, WeChat codes, and the operator's admin command.

Every login identifier is a ``LoginAlias`` item written with ``attribute_not_exists`` in
the same transaction as the account, so a phone or a unionid can never belong to two
accounts, even when two sign-ups race.

Example
-------
>>> session = register_with_phone("13812345678", "s3cret-pass", "patient", "Li", utc_now())  # doctest: +SKIP
>>> session.principal.role  # doctest: +SKIP
'patient'
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pynamodb.exceptions import DoesNotExist, PutError, TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from chalicelib.accounts import tokens, wechat
from chalicelib.accounts.roles import ADMIN, Principal
from chalicelib.clock import iso
from chalicelib.config import get_settings
from chalicelib.errors import ApiError
from chalicelib.models.transactions import CONDITION_FAILED, CONFLICT, busy, cancellation_codes
from chalicelib.models.users import Account, LoginAlias, LoginThrottle, UsersTable
from chalicelib.security import passwords, privacy

if TYPE_CHECKING:
    from chalicelib.accounts.wechat import WeChatIdentity


def phone_alias_key(phone: str) -> str:
    return f"LOGIN#phone#{privacy.lookup_hash('phone', phone)}"


def _wechat_alias_keys(identity: WeChatIdentity) -> list[str]:
    keys = [f"LOGIN#openid#{identity.app_id}#{identity.openid}"]
    if identity.unionid:
        keys.insert(0, f"LOGIN#unionid#{identity.unionid}")
    return keys


def login_alias(key: str, user_id: str, now: datetime) -> LoginAlias:
    """The alias item that makes ``key`` sign in to ``user_id``."""
    alias = LoginAlias(key, "LOGIN")
    alias.user_id, alias.created_at = user_id, iso(now)
    return alias


def _new_account(role: str, now: datetime) -> Account:
    user_id = uuid.uuid4().hex
    account = Account(f"USER#{user_id}", "PROFILE")
    account.user_id, account.role, account.revision = user_id, role, 1
    account.created_at = account.updated_at = iso(now)
    if role in ("doctor", "hospital"):
        account.verification_status = "unverified"
    return account


def _create(account: Account, alias_keys: list[str], now: datetime) -> None:
    """Write the account and its login aliases at once; 409 when an alias is taken."""
    try:
        with TransactWrite(connection=UsersTable._get_connection().connection) as transaction:
            transaction.save(account, condition=Account.pk.does_not_exist())
            for key in alias_keys:
                transaction.save(login_alias(key, account.user_id, now), condition=LoginAlias.pk.does_not_exist())
    except TransactWriteError as error:
        codes = cancellation_codes(error)
        if CONDITION_FAILED in codes:
            raise AliasTakenError from None
        if CONFLICT in codes:
            raise busy() from None
        raise


class AliasTakenError(Exception):
    """A login identifier already belongs to an account."""


def _account_of_alias(key: str) -> Account | None:
    try:
        user_id = LoginAlias.get(key, "LOGIN", consistent_read=True).user_id
        return Account.get(f"USER#{user_id}", "PROFILE", consistent_read=True)
    except DoesNotExist:
        return None


# --- phone + password --------------------------------------------------------------------------


def _create_phone_account(role: str, phone: str, password: str, name: str | None, now: datetime) -> Account:
    """An account that signs in with ``phone`` and ``password``; 409 ``phone_taken`` when the phone has one."""
    account = _new_account(role, now)
    account.name = name
    account.phone_cipher = privacy.encrypt("phone", phone)
    account.phone_masked = privacy.mask_phone(phone)
    account.password_hash = passwords.hash_password(password)
    try:
        _create(account, [phone_alias_key(phone)], now)
    except AliasTakenError:
        raise ApiError(409, "phone_taken", "This phone number already has an account", "该手机号已注册") from None
    return account


def register_with_phone(phone: str, password: str, role: str, name: str | None, now: datetime) -> tokens.Session:
    """Create an account that signs in with ``phone`` and ``password``, and sign it in."""
    account = _create_phone_account(role, phone, password, name, now)
    return tokens.start_session(Principal(account.user_id, role), now)


def _throttle_window(phone: str, now: datetime) -> LoginThrottle:
    window = get_settings().login_window_seconds
    start = int(now.timestamp()) // window * window
    counter = LoginThrottle(f"THROTTLE#login#{privacy.lookup_hash('phone', phone)}", str(start))
    counter.expires_at = datetime.fromtimestamp(start + 2 * window, tz=now.tzinfo)
    return counter


def _reserve_attempt(counter: LoginThrottle, now: datetime) -> None:
    """Count an attempt before the password is checked, so parallel guesses cannot pass the limit."""
    limit = get_settings().login_max_failures
    try:
        counter.update(
            actions=[
                LoginThrottle.item_type.set(LoginThrottle),
                LoginThrottle.failures.add(1),
                LoginThrottle.expires_at.set(counter.expires_at),
            ],
            condition=LoginThrottle.failures.does_not_exist() | (LoginThrottle.failures < limit),
        )
    except UpdateError as error:
        if error.cause_response_code != "ConditionalCheckFailedException":
            raise
        window_end = int(counter.sk) + get_settings().login_window_seconds
        raise ApiError(
            429,
            "too_many_attempts",
            "Too many failed sign-ins for this phone; try again later",
            "该手机号登录失败次数过多，请稍后再试",
            {"retry_after_seconds": max(1, window_end - int(now.timestamp()))},
        ) from None


def login_with_phone(phone: str, password: str, now: datetime) -> tokens.Session:
    """Sign in with phone and password; 401 on a wrong pair, 429 after too many failures."""
    counter = _throttle_window(phone, now)
    _reserve_attempt(counter, now)
    account = _account_of_alias(phone_alias_key(phone))
    matches = passwords.verify_password(password, account.password_hash if account else None)
    if account is None or not matches:
        raise ApiError(401, "invalid_credentials", "Wrong phone number or password", "手机号或密码错误")
    counter.update(actions=[LoginThrottle.failures.add(-1)])  # a success does not count against the phone
    return tokens.start_session(Principal(account.user_id, account.role), now)


def create_admin(phone: str, password: str, name: str, now: datetime) -> str:
    """Create an admin account (operator command only; no route creates admins)."""
    return _create_phone_account(ADMIN, phone, password, name, now).user_id


# --- WeChat ------------------------------------------------------------------------------------


def _put_alias(key: str, user_id: str, now: datetime) -> bool:
    """Write a login alias unless one exists; False when it did (another account, or a concurrent login)."""
    try:
        login_alias(key, user_id, now).save(condition=LoginAlias.pk.does_not_exist())
    except PutError as error:
        if error.cause_response_code != "ConditionalCheckFailedException":
            raise
        return False
    return True


def _link_app(account: Account, identity: WeChatIdentity, now: datetime) -> None:
    """Remember what this login taught us: the app's openid (payments need it) and the unionid.

    An account made from a login without a unionid learns it here, so the person's other
    apps find the same account. A unionid already linked elsewhere is left alone.
    """
    actions = []
    openids = dict(account.wechat_openids.as_dict()) if account.wechat_openids else {}
    if openids.get(identity.app_id) != identity.openid:
        _put_alias(f"LOGIN#openid#{identity.app_id}#{identity.openid}", account.user_id, now)
        actions.append(Account.wechat_openids[identity.app_id].set(identity.openid))
    learns_unionid = identity.unionid is not None and not account.wechat_unionid
    if learns_unionid and _put_alias(f"LOGIN#unionid#{identity.unionid}", account.user_id, now):
        actions.append(Account.wechat_unionid.set(identity.unionid))
    if actions:
        account.update(actions=actions)


def _wechat_account(identity: WeChatIdentity) -> Account | None:
    for key in _wechat_alias_keys(identity):
        account = _account_of_alias(key)
        if account is not None:
            return account
    return None


def _signed_in(account: Account, identity: WeChatIdentity, created: bool, now: datetime) -> dict[str, Any]:
    if not created:
        _link_app(account, identity, now)
    session = tokens.start_session(Principal(account.user_id, account.role), now)
    return {**session.as_response(), "created": created}


def already_signed_up() -> ApiError:
    """A sign-up ticket works only to create the account: it never signs in (it could be replayed)."""
    return ApiError(
        409, "already_signed_up", "This WeChat user has an account; sign in with a new code", "该微信已注册，请重新登录"
    )


def login_with_wechat(
    app: str, code: str | None, signup_ticket: str | None, role: str | None, now: datetime
) -> tuple[int, dict[str, Any]]:
    """Sign in (200) or up (201) with WeChat; 202 with a sign-up ticket when a new user must choose a role."""
    if code is not None:
        identity = wechat.exchange_code(app, code)
    elif signup_ticket is not None:
        claims = tokens.read_signup_ticket(signup_ticket)
        if claims["app"] != app:
            raise ApiError(
                422, "validation_failed", "The ticket was issued for another app", "凭证与应用不符", {"field": "app"}
            )
        identity = wechat.WeChatIdentity(claims["app"], claims["app_id"], claims["openid"], claims.get("unionid"))
    else:
        raise ApiError(
            422, "validation_failed", "Send a code or a signup_ticket", "请提供微信登录凭证", {"field": "code"}
        )
    account = _wechat_account(identity)
    if account is not None and signup_ticket is not None:
        raise already_signed_up()
    if account is not None:
        return 200, _signed_in(account, identity, False, now)
    if role is None:
        ticket = tokens.issue_signup_ticket(identity.as_claims(), now)
        return 202, {"role_required": True, "signup_ticket": ticket, "expires_in": tokens.SIGNUP_TICKET_SECONDS}
    account = _new_account(role, now)
    account.wechat_unionid = identity.unionid
    account.wechat_openids = {identity.app_id: identity.openid}
    try:
        _create(account, _wechat_alias_keys(identity), now)
    except AliasTakenError:
        existing = _wechat_account(identity)  # the same person signed up a moment ago
        if existing is None:
            raise
        if signup_ticket is not None:
            raise already_signed_up() from None
        return 200, _signed_in(existing, identity, False, now)
    return 201, _signed_in(account, identity, True, now)
