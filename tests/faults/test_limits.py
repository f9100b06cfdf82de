"""Limits that hold whatever the headers say: chunked bodies, big headers, long URLs, floods."""

from __future__ import annotations

import socket

from tests.faults.harness import events


def test_a_chunked_body_over_the_limit_is_refused_and_never_logged(backend, tmp_path):
    client = backend(max_request_bytes=64 * 1024)
    sent = 0

    def chunks():  # no Content-Length: chunked transfer encoding
        nonlocal sent
        for _ in range(200):
            sent += 16 * 1024
            yield b'{"action": "ANNOTATION_CREATED", "pad": "' + b"x" * (16 * 1024) + b'"}'

    response = client.post(
        "/webhook", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert sent < 3_300_000  # refused as soon as the limit passed, not after the whole body
    assert not (tmp_path / "model_dir" / "events" / "webhook.jsonl").exists()
    assert client.post("/webhook", json=events(1)[0]).status_code == 200  # still serving


def test_a_lying_content_length_cannot_smuggle_a_big_body(backend):
    client = backend(max_request_bytes=1000)
    host, port = client.base_url.host, client.base_url.port
    body = b'{"action": "X", "pad": "' + b"y" * 5000 + b'"}'
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 999999999\r\n\r\n" + body)  # fmt: skip
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_header_and_url_limits(backend):
    client = backend(max_header_bytes=4096, max_url_bytes=2048)
    assert client.get("/health", headers={"x-big": "z" * 5000}).status_code == 431
    assert client.get("/health?" + "q" * 3000).status_code == 414
    assert client.get("/health", headers={"x-small": "z" * 100}).status_code == 200


def test_predict_rate_limit_per_client(backend):
    client = backend(predict_rate=60, predict_burst=3)
    codes = [client.post("/predict", json={"tasks": [{"id": 1}]}).status_code for _ in range(5)]
    assert codes == [422, 422, 422, 429, 429]  # 422: no label config; the bucket counts them
    refused = client.post("/predict", json={"tasks": [{"id": 1}]})
    assert refused.headers["retry-after"].isdigit()
    assert client.get("/health").status_code == 200  # the control plane is not rate limited
    assert client.post("/webhook", json=events(1)[0]).status_code == 200
