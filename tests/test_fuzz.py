"""A fuzz pass over the HTTP API (issue 16): schemathesis generates requests from the server's own
OpenAPI schema, valid and not, and sends them to a running server. None may get a 5xx, hang past
its timeout, or show a traceback. `benchmarks/fuzz_api.py` runs the same against a `noisecraft serve`
process with many more cases.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from noisecraft.server.context import ServerSettings
from noisecraft.settings import Limits

from server_fixtures import cached_pipeline, entry_for, make_pool, model_file, running_server

EXAMPLES = 15  # per operation and mode, and x4 drawn txt2img requests: about 600 requests, about a minute here


def fuzz(url: str, examples: int, timeout: float = 60, derandomize: bool = False) -> tuple[Counter, list[str]]:
    """Send `examples` generated requests per operation of the server's OpenAPI schema; the answers
    counted by (operation, status), and what failed: a 5xx, a traceback, a timeout or a dropped connection."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    counts: Counter = Counter()
    failures: list[str] = []

    def record(label: str, call) -> None:
        began = time.perf_counter()
        try:
            response = call()
        except Exception as error:  # a timeout or a dropped connection
            failures.append(f"{label}: {type(error).__name__}")
            return
        counts[(label, response.status_code)] += 1
        if response.status_code >= 500 or "Traceback" in response.text or time.perf_counter() - began > timeout:
            failures.append(f"{label}: {response.status_code} {response.text[:200]}")

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # what the schema allows, and what it does not

            @given(operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                      derandomize=derandomize)
            def check(case):
                record(f"{operation.label} ({mode.value})", lambda: case.call(timeout=timeout))

            check()

    # requests the model draws: valid sizes, any text in every text field (the schema's own cases are nearly all 422s)
    text = st.text(max_size=300) | st.text(st.characters(codec="utf-8"), max_size=50)

    def mostly(valid: list, other):  # three times in four a value the server takes
        return st.one_of(st.sampled_from(valid), st.sampled_from(valid), st.sampled_from(valid), other)

    @given(prompt=st.text(min_size=1, max_size=300), negative=text,
           sampler=mostly(["Euler", "DPM++ 2M", "dpmpp_2m_karras", "Euler a"], text),
           scheduler=mostly(["", "karras", "automatic"], text), subject=mostly(["auto", "off"], text),
           seed=mostly([-1, 0, 7], st.integers(-2, 2**64)), cfg=mostly([1.0, 3.0, 7.5], st.floats(-1, 200, allow_nan=False)))
    @settings(max_examples=examples * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              derandomize=derandomize)
    def draw(prompt, negative, sampler, scheduler, subject, seed, cfg):
        body = {"prompt": prompt, "negative_prompt": negative, "sampler_name": sampler, "scheduler": scheduler,
                "subject": subject, "seed": seed, "cfg_scale": cfg, "steps": 2, "width": 16, "height": 16}
        record("POST /sdapi/v1/txt2img (drawn)", lambda: httpx.post(url + "/sdapi/v1/txt2img", json=body, timeout=timeout))

    draw()
    return counts, failures


def test_no_request_makes_the_server_fail(tmp_path):
    model = model_file(tmp_path, "pixel", text=True)
    limits = Limits(max_steps=3, max_images=2, max_side=32)  # what is drawn stays small: the fuzz is about the answers
    with running_server(make_pool({entry_for(model): cached_pipeline(model)}, queue_size=4), ServerSettings(limits=limits)) as url:
        counts, failures = fuzz(url, EXAMPLES, derandomize=True)  # the same cases on every run
    operations = {label.split(" (")[0] for label, _ in counts}
    assert len(operations) >= 14 and sum(counts.values()) >= 14 * 10  # every route was tried, many times
    drawn = {status: n for (label, status), n in counts.items() if label.endswith("(drawn)")}
    assert drawn.get(200, 0) >= 5 and drawn.get(422, 0) > 0  # pictures were made, and refusals given
    assert failures == []
