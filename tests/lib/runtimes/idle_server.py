#!/usr/bin/python3
"""An HTTP/1.1 keepalive server (Python's http.server) that closes connections idle for
--idle-timeout seconds, as a real server's keepalive timeout does.

    idle_server.py --host IP --port N --idle-timeout 0.3 [--body-size 64]

Python's socketserver ends a connection with shutdown(SHUT_WR) then close(): a request that
arrives between the two is unread at close() (the kernel then answers RST). Prints
{"port": N} once listening; serves until SIGTERM. Stdlib only.
"""

import argparse
import json
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, required=True)
    ap.add_argument("--body-size", type=int, default=64)
    args = ap.parse_args()
    body = b"x" * args.body_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = args.idle_timeout  # socket timeout while waiting for the next request

        def do_GET(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)  # the request body: the next request follows it
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if ":" in args.host else socket.AF_INET

    server = Server((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
