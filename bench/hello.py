"""A bare WSGI app on Waitress: B3's ceiling, what the server alone can do on this machine."""

from __future__ import annotations

import argparse

import waitress

BODY = b'{"status": "ok"}'


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "16")])
    return [BODY]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    waitress.serve(app, host="127.0.0.1", port=args.port, threads=args.threads, ident="hello")


if __name__ == "__main__":
    main()
