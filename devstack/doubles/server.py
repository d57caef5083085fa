"""A provider double on a loopback port: its API as the provider serves it, plus the payer's buttons.

Every request goes to the double's ``handle`` exactly as it arrived (method, full URL,
headers, raw body), except three control routes that play the people on the provider's side:

- ``POST /_double/pay`` ``{"client_params": {...}}``: the payer pays with what our API gave
  the front end (the double checks our signature on it) and the provider notifies us;
- ``POST /_double/payouts/{out_bill_no}`` ``{"outcome": "success"|"fail"}``: the payee side
  finishes an asynchronous transfer;
- ``POST /_double/plan-payout`` ``{"outcome": ...}``: how the next synchronous transfer ends.

Example
-------
>>> server, base_url = serve(WeChatPayDouble(credentials.double, deliver=http_deliver))  # doctest: +SKIP
>>> requests.post(f"{base_url}/_double/pay", json={"client_params": params}, timeout=10)  # doctest: +SKIP
"""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from typing import Any, Protocol

CONTROL = "/_double/"
DELIVERY_TIMEOUT_S = 10


class Double(Protocol):
    channel: str

    def handle(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]: ...

    def pay(self, client_params: dict[str, Any]) -> None: ...

    def finish_payout(self, out_bill_no: str, outcome: str) -> None: ...

    def plan_payout(self, outcome: str) -> None: ...


def http_deliver(url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
    """POST a notification to our callback route, as the provider does; answer (status, body)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except OSError as error:  # refused, reset, timed out: the provider would retry later
        return 0, str(error)


def _control(double: Double, path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == "pay":
        double.pay(body["client_params"])
    elif path == "plan-payout":
        double.plan_payout(body["outcome"])
    elif path.startswith("payouts/"):
        double.finish_payout(path.removeprefix("payouts/"), body["outcome"])
    else:
        raise KeyError(path)
    return {"ok": True}


def serve(double: Double, port: int = 0) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start ``double`` on 127.0.0.1 (a free port unless given) in a daemon thread; answer the server and its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = dict(self.headers.items())
            if self.path.startswith(CONTROL):
                try:
                    answer = _control(double, self.path.removeprefix(CONTROL), json.loads(body or b"{}"))
                    status, out_headers, out = 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()
                except (KeyError, ValueError, TypeError) as error:
                    status, out_headers, out = (
                        400,
                        {"Content-Type": "application/json"},
                        json.dumps({"error": f"{type(error).__name__}: {error}"}).encode(),
                    )
            else:
                url = f"http://{self.headers.get('Host', '127.0.0.1')}{self.path}"
                status, out_headers, out = double.handle(self.command, url, headers, body)
            self.send_response(status)
            for name, value in out_headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read the double's own records, not an access log."""

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"{double.channel}-double", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"
