"""Addresses a user types (`--master`, `--http`, `--url`, `--link-to`) are parsed at the boundary:
one InputError naming the flag for anything but ASCII HOST:PORT / http(s) URLs."""

from __future__ import annotations

import pytest

from planner.errors import InputError
from vit_ops.runtime.rendezvous import Endpoint


@pytest.mark.parametrize("text", ["127.0.0.1:\u00b3", "\u0661\u0662\u0667.0.0.1:\u0668\u0660",
                                  "h:\u0663", "[::1:80", "::1:80", "h:0", "h:65536", "h:",
                                  ":80", "h o:80", "h:80 ", "h:" + "9" * 30, "\x00:80",
                                  "\u0661\u0662\u0667.0.0.1:80"])  # resolving it retried
def test_bad_endpoints_are_one_input_error(text):
    with pytest.raises(InputError, match="HOST:PORT"):
        Endpoint.parse(text, field="--master")


def test_good_endpoints():
    assert Endpoint.parse("10.0.0.1:29500") == Endpoint("10.0.0.1", 29500)
    assert Endpoint.parse("[::1]:80") == Endpoint("::1", 80)
    assert Endpoint.parse("host:0", any_port=True).port == 0


@pytest.mark.parametrize("text", ["\u00b3", "127.0.0.1:\u00b3", "", "99999", "-1", "a:b:c"])
def test_bad_http_addresses(text):
    from vit_ops.runtime.cli import _http_address

    with pytest.raises(InputError, match="--http"):
        _http_address(text)


def test_http_addresses():
    from vit_ops.runtime.cli import _http_address

    assert _http_address("8000") == ("127.0.0.1", 8000)
    assert _http_address("0.0.0.0:0") == ("0.0.0.0", 0)
    assert _http_address("[::1]:9") == ("::1", 9)


@pytest.mark.parametrize("url", ["http://[::1", "", " ", "notaurl", "ftp://h:1", "http://",
                                 "http://h:99999", "file:///etc/passwd"])
def test_bad_service_urls_are_one_input_error(url):
    pytest.importorskip("httpx")
    from vit_ops.runtime.client import Client

    with pytest.raises(InputError, match="--url"):
        Client(url)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
def test_client_timeout_must_be_positive_and_finite(timeout):
    pytest.importorskip("httpx")
    from vit_ops.runtime.client import Client

    with pytest.raises(InputError, match="--timeout"):
        Client("http://127.0.0.1:1", timeout_s=timeout)


@pytest.mark.parametrize("flag,value", [("max_wait_ms", 1e300), ("max_wait_ms", float("nan")),
                                        ("queue", 10**12), ("max_batch", 10**9),
                                        ("max_body", 2**63), ("restarts", 10**12)])
def test_service_settings_have_upper_bounds(flag, value):
    import argparse

    from vit_ops.runtime.cli import _service_config

    args = argparse.Namespace(http="0", max_batch=1, queue=64, max_wait_ms=0.0, max_body=2**20,
                              restarts=5, restart_window=300.0)
    setattr(args, flag, value)
    with pytest.raises(InputError, match="--" + {"max_body": "max-body", "restarts": "restarts"}.get(flag, flag.replace("_", "-"))):
        _service_config(args)
