#!/usr/bin/env python3
"""A local HTTP service that answers slowly, for specs and examples/enrich.lua.

GET /client/<id>?delay=<seconds>  ->  {"id": "<id>", "name": "client <id>", "tier": "gold"|"basic"}
Prints "listening on PORT" once ready. Usage: slow_http.py [PORT] (0 = any free port).
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path)
        delay = float(parse_qs(url.query).get("delay", ["0"])[0])
        time.sleep(delay)
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "client":
            self.send_error(404)
            return
        cid = parts[1]
        body = json.dumps({"id": cid, "name": "client " + cid,
                           "tier": "gold" if cid.endswith("7") else "basic"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print("listening on %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
