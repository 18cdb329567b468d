"""A real HTTPS server (http.server under ssl, in a thread) that serves MTA-STS policies (RFC 8461 §3.3)."""

from __future__ import annotations

import http.server
import ssl
import threading
from dataclasses import dataclass, field

from .named import free_port


@dataclass
class PolicyServer:
    """Serves `policies[host]` at /.well-known/mta-sts.txt for the Host header `host`; counts the fetches."""

    address: str
    port: int
    policies: dict[str, str]
    content_type: str = "text/plain"
    fetches: list[str] = field(default_factory=list)
    httpd: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop answering: the connection is refused from now on."""
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None


def start_policy_server(address: str, context: ssl.SSLContext, policies: dict[str, str],
                        port: int | None = None) -> PolicyServer:
    server = PolicyServer(address, port or free_port([address]), policies)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            host = (self.headers.get("Host") or "").split(":")[0]
            server.fetches.append(host)
            body = server.policies.get(host)
            if self.path != "/.well-known/mta-sts.txt" or body is None:
                self.send_error(404)
                return
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", server.content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
            return None

    httpd = http.server.ThreadingHTTPServer((address, server.port), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.httpd = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server
