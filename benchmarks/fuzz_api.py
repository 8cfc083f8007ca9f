"""A long fuzz pass over `noisecraft serve`'s HTTP API (the suite's tests/test_fuzz.py, with more cases).

    python benchmarks/fuzz_api.py [--examples 200] [--model PATH]

Starts `noisecraft serve` (a tiny random text model by default, server limits kept small so that
what is drawn stays cheap), loads its OpenAPI schema with schemathesis and sends `--examples`
generated requests per operation and mode (valid and invalid for the schema), and 4x that many
txt2img requests with any text in their text fields (`tests/test_fuzz.py`'s `fuzz`). Counts the
answers per operation and status; fails on any 5xx, any answer slower than 60 s, a dropped
connection, or a traceback in a body.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import serving  # noqa: E402
from test_fuzz import fuzz  # noqa: E402  (the suite's fuzz pass, run longer here)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=200, help="generated requests per operation")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from helpers import tiny_model_file

            model = str(tiny_model_file(Path(tmp) / "tiny.safetensors"))
        with serving("--model", model, "--device", "cpu", "--max-images", "2", "--max-size", "32", "--queue-size", "4") as (url, _):
            started = time.perf_counter()
            counts, failures = fuzz(url, args.examples)
            wall = time.perf_counter() - started
    total = sum(counts.values())
    print("| operation | answers by status |\n|---|---|")
    for label in sorted({label for label, _ in counts}):
        statuses = ", ".join(f"{status}: {n}" for (name, status), n in sorted(counts.items()) if name == label)
        print(f"| {label} | {statuses} |")
    print(f"\n{total} requests in {wall:.0f} s; failures: {len(failures)}")
    for line in failures[:20]:
        print("FAIL:", line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
