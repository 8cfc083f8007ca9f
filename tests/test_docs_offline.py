"""/docs and /redoc work with no internet: Chromium loads them with every request off this machine
refused, and Swagger UI still draws the API (its script and styles are served by noisecraft)."""

from __future__ import annotations

from urllib.parse import urlsplit

from test_browser import ARTIFACTS, browser  # noqa: F401  (the shared Chromium fixture)
from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server


def test_docs_render_with_the_network_off(browser, tmp_path):  # noqa: F811
    path = model_file(tmp_path, "pixel", text=False)
    with running_server(make_pool({entry_for(path): cached_pipeline(path)})) as url:
        local = urlsplit(url).netloc
        refused: list[str] = []
        context = browser.new_context()
        page = context.new_page()

        def only_this_machine(route):
            if urlsplit(route.request.url).netloc == local:
                return route.continue_()
            refused.append(route.request.url)
            return route.abort("internetdisconnected")

        page.route("**/*", only_this_machine)
        page.goto(url + "/docs")
        page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=20000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert "/v1/images/generations" in paths and "/sdapi/v1/txt2img" in paths and "/studio/imagine" in paths
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
        assert refused == []  # Swagger UI asked nothing of the internet
        page.goto(url + "/redoc")
        page.wait_for_selector("h1:has-text('noisecraft')", timeout=20000)
        assert "/v1/images/generations" in page.content()
        context.close()
    # ReDoc's bundle asks its own CDN for the small logo in its "powered by" footer; refused, the page draws without it
    assert [u for u in refused if "logo-mini.svg" not in u] == []
