"""The smallest WSGI application: what a web server and the client cost with nothing behind
them (bench/http_floor.py)."""


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]
