"""The one error shape of the API and the exception that carries it.

Every error response, whoever produces it (a handler, Chalice itself, the local gateway),
has the body ``{"error": {"code", "message", "message_zh", "details", "request_id"}}``.
``code`` is stable and machine-readable; the messages are for people.

Example
-------
>>> error_body("not_found", "No such invitation", "找不到该邀约", request_id="r-1")["error"]["code"]
'not_found'
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Raise from a handler or a domain module to answer with the error shape.

    It carries no Chalice type, so domain modules can raise it; the route wrapper
    (``handlers.access.route``) hands it to the middleware, which renders it.

    >>> ApiError(409, "conflict", "Try again", "请重试").status
    409
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        message_zh: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.message_zh = message_zh
        self.details = details or {}


def error_body(
    code: str,
    message: str,
    message_zh: str,
    *,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Build the error body; ``details`` carries machine-readable specifics."""
    return {
        "error": {
            "code": code,
            "message": message,
            "message_zh": message_zh,
            "details": details or {},
            "request_id": request_id,
        }
    }


INTERNAL_ERROR = ("internal_error", "An internal server error occurred.", "服务器内部错误")
"""Code, message and Chinese message of every 500: nothing more reaches the client."""

# Chalice's own error names (its ``{"Code": ...}`` bodies) → our code and Chinese message.
CHALICE_ERRORS: dict[str, tuple[str, str]] = {
    "BadRequestError": ("bad_request", "请求无效"),
    "BadRequest": ("not_acceptable", "请求的 Accept 头与响应类型不符"),
    "UnauthorizedError": ("unauthorized", "未登录或登录已过期"),
    "ForbiddenError": ("forbidden", "无权执行此操作"),
    "NotFoundError": ("not_found", "资源不存在"),
    "MethodNotAllowedError": ("method_not_allowed", "不支持该请求方法"),
    "RequestTimeoutError": ("request_timeout", "请求超时"),
    "ConflictError": ("conflict", "与当前状态冲突，请重试"),
    "UnprocessableEntityError": ("unprocessable_entity", "请求内容无法处理"),
    "TooManyRequestsError": ("too_many_requests", "请求过于频繁，请稍后再试"),
    "UnsupportedMediaType": ("unsupported_media_type", "不支持的请求内容类型"),
    "InternalServerError": ("internal_error", "服务器内部错误"),
}

# The messages Chalice uses that deserve a more precise code.
CHALICE_MESSAGES: dict[str, tuple[str, str]] = {
    "Error Parsing JSON": ("invalid_json", "请求体不是有效的 JSON"),
}


def from_chalice_body(body: Any, status: int) -> tuple[str, str, str]:
    """Translate a Chalice ``{"Code", "Message"}`` body into (code, message, message_zh).

    >>> from_chalice_body({"Code": "NotFoundError", "Message": "x"}, 404)
    ('not_found', 'x', '资源不存在')
    """
    name = body.get("Code", "") if isinstance(body, dict) else ""
    message = str(body.get("Message", "")) if isinstance(body, dict) else ""
    if message in CHALICE_MESSAGES:
        code, message_zh = CHALICE_MESSAGES[message]
        return code, message, message_zh
    if name in CHALICE_ERRORS:
        code, message_zh = CHALICE_ERRORS[name]
        return code, message or name, message_zh
    if status >= 500:
        return INTERNAL_ERROR
    return "http_error", message or f"HTTP {status}", "请求失败"
