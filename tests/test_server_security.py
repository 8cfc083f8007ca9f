"""Security defaults of `noisecraft serve`: the API key on every API route, no open host without a
key, no CORS unless asked, and the key never in a response or a log line."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from noisecraft.cli import main
from noisecraft.errors import UserError
from noisecraft.server import ServeOptions, check_exposure, serve
from noisecraft.server.app import create_app
from noisecraft.server.context import ServerSettings

from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

KEY = "k3y-Very-Secret-7f3e"
PUBLIC = {"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return model_file(tmp_path_factory.mktemp("security-models"), "pixel", text=False)


@pytest.fixture(scope="module")
def secured(model):
    pool = make_pool({entry_for(model): cached_pipeline(model)})
    with running_server(pool, ServerSettings(api_key=KEY)) as url:
        yield url


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _api_routes(model) -> list[tuple[str, str]]:
    """Every route the app documents (its OpenAPI schema), with path parameters filled in."""
    app = create_app(make_pool({entry_for(model): cached_pipeline(model)}), ServerSettings(api_key=KEY))
    return [(method.upper(), path.replace("{task_id}", "some-task")) for path, methods in app.openapi()["paths"].items()
            if path not in PUBLIC for method in methods]


def test_every_api_route_needs_the_key(secured, model):
    routes = _api_routes(model)
    assert len(routes) >= 14  # every A1111 route, the queue and /info: a test of nothing would fail here
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {KEY}x"}, _basic("user", "nope"),
             {"Authorization": "Basic %%%"}, {"Authorization": KEY}]
    with httpx.Client(base_url=secured) as client:
        for method, path in routes:
            for headers in wrong:
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.status_code)
                assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_bearer_and_basic_auth_are_accepted(secured):
    for headers in ({"Authorization": f"Bearer {KEY}"}, _basic("anyone", KEY)):
        assert httpx.get(secured + "/sdapi/v1/options", headers=headers).status_code == 200
        response = httpx.post(secured + "/sdapi/v1/txt2img", headers=headers, timeout=60,
                              json={"prompt": "", "steps": 1, "width": 16, "height": 16})
        assert response.status_code == 200


def test_the_page_is_public_and_locked_down(secured):
    page = httpx.get(secured + "/")
    assert page.status_code == 200 and "noisecraft" in page.text
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert httpx.get(secured + "/static/app.js").status_code == 200
    assert httpx.get(secured + "/static/%2e%2e/app.py").status_code == 404  # no way out of the page's folder
    assert httpx.get(secured + "/server/app.py").status_code == 401  # anything else needs the key


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "shop-server.lan"])
def test_an_open_host_without_a_key_refuses_to_start(host, capsys):
    assert main(["serve", "--host", host, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "--insecure" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    check_exposure(host, KEY, insecure=False)
    check_exposure(host, None, insecure=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_needs_no_key(host):
    check_exposure(host, None, insecure=False)


def test_a_taken_port_is_one_sentence(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            serve(ServeOptions(port=taken.getsockname()[1]))
    finally:
        taken.close()


def test_no_cors_unless_an_origin_is_given(secured, model):
    headers = {"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"}
    assert "access-control-allow-origin" not in httpx.get(secured + "/sdapi/v1/options", headers=headers).headers
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(secured + "/sdapi/v1/txt2img", headers=preflight).headers
    pool = make_pool({entry_for(model): cached_pipeline(model)})
    with running_server(pool, ServerSettings(cors_origins=["https://shop.example"])) as url:
        allowed = httpx.options(url + "/sdapi/v1/txt2img", headers=preflight | {"Origin": "https://shop.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
        refused = httpx.options(url + "/sdapi/v1/txt2img", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_noisecraft_serve_end_to_end_and_the_key_never_shows(model, tmp_path):
    """The command a user types: page and API up, the key needed, and never in output or responses."""
    port = _free_port()
    env = os.environ | {"NOISECRAFT_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "noisecraft.cli", "serve", "--model", str(model), "--port", str(port),
                                "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=tmp_path)
    url, seen = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "noisecraft serve did not come up"
            time.sleep(0.2)
        seen.append(httpx.get(url + "/sdapi/v1/options"))
        assert seen[-1].status_code == 401
        seen.append(httpx.get(url + "/sdapi/v1/options", headers={"Authorization": f"Bearer {KEY}"}))
        assert seen[-1].status_code == 200
        seen.append(httpx.post(url + "/sdapi/v1/txt2img", headers=_basic("me", KEY), timeout=60,
                               json={"prompt": "", "seed": 1, "steps": 2, "width": 16, "height": 16}))
        assert seen[-1].status_code == 200
        seen.append(httpx.post(url + "/sdapi/v1/txt2img", headers={"Authorization": f"Bearer {KEY[:-1]}"},
                               json={"prompt": KEY[:-1]}))
        seen.append(httpx.get(url + "/info", headers={"Authorization": f"Bearer {KEY}"}))
        seen.append(httpx.get(url + "/openapi.json"))
        seen.append(httpx.get(url + "/docs"))
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "serving" in output and "API key required" in output and "GET /sdapi/v1/options" in output
    assert KEY not in output
    for response in seen:
        assert KEY not in response.text and KEY not in str(response.headers)
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_the_key_is_checked_before_the_body_and_huge_bodies_are_refused(model):
    pool = make_pool({entry_for(model): cached_pipeline(model)})
    with running_server(pool, ServerSettings(api_key=KEY, max_body=4096)) as url:
        big = {"prompt": "x" * 10_000}
        assert httpx.post(url + "/sdapi/v1/txt2img", json=big).status_code == 401
        response = httpx.post(url + "/sdapi/v1/txt2img", json=big, headers={"Authorization": f"Bearer {KEY}"})
        assert response.status_code == 413 and "larger than" in response.json()["detail"]


def test_models_are_named_never_reached_by_path(model, tmp_path):
    from noisecraft.server.catalog import Catalog

    run = tmp_path / "shop-run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(model.read_bytes())
    catalog = Catalog.from_paths([str(model), str(run / "model.safetensors"), str(run)])
    names = [entry.name for entry in catalog.entries]
    assert names == [model.stem, "shop-run", "shop-run-2"]  # a run's model.safetensors is called by its folder
    first = catalog.entries[0]
    assert catalog.find(first.title) is first and catalog.find(first.hash) is first and catalog.find(first.name.upper()) is first
    assert catalog.find(str(model)) is None and catalog.find("../" + model.name) is None
    with pytest.raises(UserError, match="no model at"):
        Catalog.from_paths([str(tmp_path / "missing.safetensors")])
