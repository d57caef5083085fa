"""How a user hears of an event: a ``Notifier`` sends one ``OutgoingNotice`` to its recipient.

A notice names the event and links to the invitation; it carries no health details, no
names and no phone numbers, whatever the channel. Two notifiers:

- ``LogNotifier`` (the local stage): writes one log line and sends nothing.
- ``WeChatNotifier`` (deployed stages): an official-account template message through
  wechatpy to the recipient's official-account openid. The template (its id is the
  setting ``wechat_notice_template_id``) must have two fields, ``keyword1`` (what
  happened) and ``keyword2`` (when); tapping the message opens the link.

``send`` answers with an outcome ("logged", "sent", "no_channel", "unsubscribed", ...)
when the notice is settled, sent or not; it raises ``NoticeNotSentError`` when trying again
later may succeed (WeChat busy or unreachable, a configuration WeChat refuses), so the
stream consumer redelivers the record.

Example
-------
>>> notice = OutgoingNotice("accepted", "i1", "u1", notice_link("i1"))  # doctest: +SKIP
>>> get_notifier().send(notice, account)  # doctest: +SKIP
'logged'
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from chalicelib.clock import SHANGHAI, utc_now
from chalicelib.config import get_settings
from chalicelib.observability import logger
from chalicelib.security.keys import get_keys

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from wechatpy import WeChatClient

    from chalicelib.models.users import Account

TIMEOUT_SECONDS = 5
TEMPLATE_FIELDS = ("keyword1", "keyword2")

EVENT_TEXTS: dict[str, str] = {
    "new_invitation": "您收到一个新的邀请",
    "accepted": "您的邀请已被接受",
    "declined": "您的邀请已被拒绝",
    "expired": "邀请已过期",
    "cancelled": "邀请已取消",
    "refunded": "您的退款已完成",
    "completed": "邀请已完成",
    "confirmed": "邀请已确认完成",
    "new_message": "您有一条新消息",
    "tipped": "\u60a8\u6536\u5230\u4e00\u4efd\u6253\u8d4f",  # 您收到一份打赏
    "reviewed": "\u60a8\u6536\u5230\u4e00\u6761\u65b0\u8bc4\u4ef7",  # 您收到一条新评价
    "complaint_filed": "\u60a8\u7684\u670d\u52a1\u6536\u5230\u4e00\u6761\u6295\u8bc9",  # 您的服务收到一条投诉
    "complaint_confirmed": "\u6295\u8bc9\u5df2\u6838\u5b9e",  # 投诉已核实
    "complaint_rejected": "\u6295\u8bc9\u672a\u88ab\u91c7\u7eb3",  # 投诉未被采纳
}
"""What a template message says of each outbox event: the event only, never the case."""

PERMANENT_ERRCODES: dict[int, str] = {
    40003: "invalid_openid",
    43004: "unsubscribed",
    43019: "blocked",
    43101: "refused_by_user",
}
"""WeChat refusals that concern this recipient and will not change on a retry: recorded, not retried.

Any other errcode (system busy, rate limit, a token, template or IP-whitelist problem)
raises ``NoticeNotSentError``: it is WeChat's or our configuration's, and the notice should
go out once it is fixed.
"""


class NoticeNotSentError(RuntimeError):
    """The notice could not be sent now, but may be later: the stream record is redelivered."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"notice not sent: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class OutgoingNotice:
    """One notification to send: which event, on which invitation, for whom, and the link to open.

    ``occurred_at`` is when the event happened (the notice's ``created_at``); None means now.
    """

    event: str
    invitation_id: str
    recipient_id: str
    link: str
    occurred_at: datetime | None = None


def notice_link(invitation_id: str) -> str:
    """The front-end page of the invitation: the only thing a notification points to."""
    return f"{get_settings().frontend_url}/invitations/{invitation_id}"


class Notifier(Protocol):
    """A channel to users."""

    def send(self, notice: OutgoingNotice, recipient: Account) -> str:
        """Send ``notice`` to ``recipient``; the outcome, or ``NoticeNotSentError`` when a retry may succeed."""
        ...


class LogNotifier:
    """The local sandbox: logs that a notice would go out, and sends nothing.

    The line holds the event, the invitation id, the recipient id and the link only.
    """

    def send(self, notice: OutgoingNotice, recipient: Account) -> str:
        logger.info(
            "notice",
            extra={
                "notice_event": notice.event,
                "invitation_id": notice.invitation_id,
                "recipient_id": notice.recipient_id,
                "link": notice.link,
            },
        )
        return "logged"


def _openids(recipient: Account) -> dict[str, str]:
    """The recipient's openid per WeChat app id (``Account.wechat_openids``)."""
    openids: Any = recipient.wechat_openids
    if not openids:
        return {}
    raw = openids.as_dict() if hasattr(openids, "as_dict") else openids
    return {str(app_id): str(openid) for app_id, openid in raw.items()}


def _timeout_session_adapter(seconds: float) -> Any:
    """An HTTP adapter that puts a timeout on every request that has none.

    wechatpy passes the client's timeout to API calls but not to the access-token fetch
    (``cgi-bin/token``), which would otherwise wait forever.
    """
    from requests.adapters import HTTPAdapter

    class TimeoutAdapter(HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = seconds
            return super().send(request, **kwargs)

    return TimeoutAdapter()


class WeChatNotifier:
    """Official-account template messages through wechatpy.

    The client (and its access token) is made on first send, never at import, and kept
    for the container's life. Only the official-account openid can receive template
    messages: a user known only through the mini program has ``no_channel``.
    """

    def __init__(
        self,
        app_id: str,
        template_id: str,
        secret: Callable[[], str] | None = None,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self.app_id = app_id
        self.template_id = template_id
        self.timeout = timeout
        self._secret = secret or _oa_secret
        self._client: WeChatClient | None = None

    def client(self) -> WeChatClient:
        if self._client is None:
            from wechatpy import WeChatClient

            client = WeChatClient(self.app_id, self._secret(), timeout=self.timeout)
            adapter = _timeout_session_adapter(self.timeout)
            client._http.mount("https://", adapter)
            client._http.mount("http://", adapter)
            self._client = client
        return self._client

    def template_data(self, notice: OutgoingNotice) -> dict[str, dict[str, str]]:
        """The message's fields: what happened and when (Asia/Shanghai), nothing else."""
        at = (notice.occurred_at or utc_now()).astimezone(SHANGHAI)
        what, when = TEMPLATE_FIELDS
        return {what: {"value": EVENT_TEXTS[notice.event]}, when: {"value": at.strftime("%Y-%m-%d %H:%M")}}

    def send(self, notice: OutgoingNotice, recipient: Account) -> str:
        import requests
        from wechatpy.exceptions import WeChatClientException

        openid = _openids(recipient).get(self.app_id)
        if not openid:
            return "no_channel"
        data = self.template_data(notice)
        try:
            answer = self.client().message.send_template(openid, self.template_id, data, url=notice.link)
        except WeChatClientException as error:
            errcode = error.errcode
            if errcode is not None and int(errcode) in PERMANENT_ERRCODES:
                return PERMANENT_ERRCODES[int(errcode)]
            raise NoticeNotSentError(f"wechat errcode {errcode}") from None
        except (requests.RequestException, ValueError) as error:  # timeout, refused connection, not JSON
            raise NoticeNotSentError(f"wechat unreachable ({type(error).__name__})") from None
        if not isinstance(answer, dict):  # wechatpy hands back a body that is not JSON as it came
            raise NoticeNotSentError("wechat answered with a body that is not JSON")
        return "sent"


def _oa_secret() -> str:
    secret = get_keys().wechat_secrets.get("oa")
    if not secret:
        raise RuntimeError("the keys secret lacks wechat_oa_secret")
    return secret


@lru_cache(maxsize=4)
def _notifier(kind: str, app_id: str, template_id: str) -> Notifier:
    if kind == "log":
        return LogNotifier()
    if kind == "wechat":
        return WeChatNotifier(app_id, template_id)
    raise ValueError(f"unknown notifier {kind!r}")


def get_notifier() -> Notifier:
    """The stage's notifier (setting ``notifier``), one per container so the WeChat token is reused."""
    settings = get_settings()
    return _notifier(settings.notifier, settings.wechat_app_ids["oa"], settings.wechat_notice_template_id)
