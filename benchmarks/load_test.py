"""Load test of `noisecraft serve`: many concurrent A1111 clients against one CPU worker.

    python benchmarks/load_test.py [--clients 32] [--requests 8] [--total 500] [--steps 20] [--threads N] [--model PATH]
    python benchmarks/load_test.py --poll-test [--pollers 8] [--size 512] [--jobs 2] [--steps 4]

`--poll-test` (issue 16): a small random-weights model of Stable Diffusion 1.x's shape (the UNet at
1/5 width, the f8 autoencoder at 1/2 width; `benchmarks/sd_speed.py`'s "small") makes `--jobs`
pictures of `--size` px, first with nobody polling, then with `--pollers` clients asking
`/sdapi/v1/progress` (with the preview) as fast as they can; each run in a fresh server. Passes when
every request is answered and the server's peak memory with pollers is within 2x of without.

Starts `noisecraft serve` as a child process (built-in model by default), then in this process:

1. times a single `Pipeline` call (1 image, same settings; median of 5) while the server is idle,
2. makes a reference image for every distinct (prompt, seed) the clients will ask for, each made
   alone by a direct `Pipeline` call,
3. runs rounds of `--clients` threads x `--requests` txt2img requests each until `--total` images
   came back. A client that gets 429 waits the server's Retry-After and asks again.

Checks: every HTTP answer is an image (200) or a 429 with Retry-After (nothing else, no dropped
connection); every image is identical (pixels and parameters text) to its reference; the server's
memory (RSS) after `--total` images is within 10% of after the first 50. Reports requests/s and
p50/p95 latency next to the single Pipeline call. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

PROMPTS = ["a palm tree", "a red apple", "a rocket", "a pizza slice", "a cat face", "the sun", "a house", "a snowman"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class Run:
    """Shared tallies of all client threads."""

    def __init__(self, server_pid: int, total: int):
        self.lock = threading.Lock()
        self.server_pid, self.total = server_pid, total
        self.images = 0
        self.status: dict[str, int] = {}
        self.bad: list[str] = []
        self.latency: list[float] = []  # the accepted attempt: queue wait + generation
        self.end_to_end: list[float] = []  # first attempt to image, 429 waits included
        self.memory: dict[int, float] = {}
        self.results: list[tuple[int, str, str]] = []  # (combo, png base64, info seed)

    def record(self, status: str) -> None:
        with self.lock:
            self.status[status] = self.status.get(status, 0) + 1

    def done_one(self) -> None:
        with self.lock:
            self.images += 1
            if self.images in (50, self.total):
                self.memory[self.images] = rss_mb(self.server_pid)


def client(run: Run, url: str, combos: list[tuple[str, int]], picks: list[int], steps: int, rng: random.Random) -> None:
    with httpx.Client(base_url=url, timeout=900) as http:
        for combo in picks:
            prompt, seed = combos[combo]
            body = {"prompt": prompt, "seed": seed, "steps": steps, "batch_size": 1, "n_iter": 1}
            first = time.perf_counter()
            while True:
                sent = time.perf_counter()
                try:
                    response = http.post("/sdapi/v1/txt2img", json=body)
                except httpx.HTTPError as error:
                    run.record("connection error")
                    run.bad.append(f"{prompt!r} seed {seed}: {type(error).__name__}")
                    break
                if response.status_code == 429:
                    run.record("429")
                    retry = response.headers.get("Retry-After")
                    if retry is None:
                        run.bad.append("a 429 without Retry-After")
                        retry = "1"
                    time.sleep(float(retry) * (0.5 + rng.random()))  # spread the retries
                    continue
                run.record(str(response.status_code))
                if response.status_code != 200 or len(response.json().get("images", [])) != 1:
                    run.bad.append(f"{prompt!r} seed {seed}: HTTP {response.status_code} {response.text[:200]}")
                    break
                now = time.perf_counter()
                with run.lock:
                    run.latency.append(now - sent)
                    run.end_to_end.append(now - first)
                    run.results.append((combo, response.json()["images"][0], json.loads(response.json()["info"])["seed"]))
                run.done_one()
                break


def sd_shaped_model(folder: Path) -> Path:
    """A random-weights single file of SD 1.x's structure at reduced width (the tests' model writer)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import diffusers
    import torch
    from clip_helpers import CLIP_L  # noqa: PLC0415
    from test_sd_pipeline import build_sd_model  # noqa: PLC0415

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(block_out_channels=(64, 128, 256, 256), layers_per_block=2,
                                          cross_attention_dim=CLIP_L["hidden_size"], attention_head_dim=8).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4).eval()
    single, _ = build_sd_model(folder, "sd1", unet=unet, vae=vae)
    return single


def poll_run(model: Path, env: dict, pollers: int, jobs: int, size: int, steps: int) -> dict:
    """One fresh server: `jobs` pictures in a row while `pollers` clients poll /progress; peak RSS and answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "noisecraft.cli", "serve", "--model", str(model), "--port", str(port),
                               "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    answers: dict[str, int] = {}
    lock, done, peak = threading.Lock(), threading.Event(), [0.0]
    try:
        while True:
            try:
                httpx.get(url + "/queue", timeout=2)
                break
            except httpx.HTTPError:
                if server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        idle = rss_mb(server.pid)

        def count(key):
            with lock:
                answers[key] = answers.get(key, 0) + 1

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb(server.pid))
                time.sleep(0.05)

        def poll():
            with httpx.Client(base_url=url, timeout=600) as http:
                while not done.is_set():
                    try:
                        count(f"progress {http.get('/sdapi/v1/progress').status_code}")
                    except httpx.HTTPError as error:
                        count(f"progress {type(error).__name__}")

        threads = [threading.Thread(target=watch)] + [threading.Thread(target=poll) for _ in range(pollers)]
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        with httpx.Client(base_url=url, timeout=1800) as http:
            for k in range(jobs):
                response = http.post("/sdapi/v1/txt2img", json={"prompt": "a product shot of a teapot", "seed": k,
                                                                "steps": steps, "width": size, "height": size})
                count(f"txt2img {response.status_code}")
        wall = time.perf_counter() - started
        done.set()
        for thread in threads:
            thread.join(600)
    finally:
        server.terminate()
        server.wait(timeout=120)
    return {"pollers": pollers, "rss_idle_mb": round(idle), "rss_peak_mb": round(peak[0]), "wall_s": round(wall, 1),
            "answers": answers}


def poll_test(args, env: dict) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else sd_shaped_model(Path(tmp))  # --model: reuse one (e.g. for another tree)
        quiet = poll_run(model, env, 0, args.jobs, args.size, args.steps)
        busy = poll_run(model, env, args.pollers, args.jobs, args.size, args.steps)
    ratio = busy["rss_peak_mb"] / quiet["rss_peak_mb"]
    polls = sum(v for k, v in busy["answers"].items() if k.startswith("progress"))
    unanswered = {k: v for k, v in busy["answers"].items() if not k.endswith(" 200")}
    print(json.dumps({"without_pollers": quiet, "with_pollers": busy, "peak_ratio": round(ratio, 3)}, indent=2))
    print(f"""
| {args.jobs} x {args.size}x{args.size}, {args.steps} steps, SD1-shaped random model | no pollers | {args.pollers} pollers |
|---|---|---|
| server peak RSS | {quiet['rss_peak_mb']} MB | {busy['rss_peak_mb']} MB ({ratio:.2f}x) |
| wall time of the jobs | {quiet['wall_s']} s | {busy['wall_s']} s |
| /progress answers | - | {polls} ({polls / max(busy['wall_s'], 1e-9):.0f}/s) |
| answers that were not 200 | {sum(v for k, v in quiet['answers'].items() if not k.endswith(' 200'))} | {sum(unanswered.values())} |""")
    ok = ratio <= 2 and not unanswered and busy["answers"].get("txt2img 200") == args.jobs
    print("PASS" if ok else "FAIL", file=sys.stderr)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8, help="requests per client per round")
    parser.add_argument("--total", type=int, default=500, help="keep running rounds until this many images came back")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the server and the single-call baseline (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--poll-test", action="store_true", help="the /progress polling test instead (see above)")
    parser.add_argument("--pollers", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.poll_test:
        return poll_test(args, env)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from noisecraft.pipeline import Pipeline

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="noisecraft-serve-", suffix=".log", delete=False)
    command = [sys.executable, "-m", "noisecraft.cli", "serve", "--port", str(port), "--queue-size", str(args.queue_size),
               "--device", "cpu"] + (["--model", args.model] if args.model else [])
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(), env=env)
    try:
        while True:
            try:
                if httpx.get(url + "/info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit(f"the server did not start; see {log.name}")
            time.sleep(0.3)
        memory_idle = rss_mb(server.pid)

        # 1. one Pipeline call, alone, same settings (this process; the server sits idle)
        pipe = Pipeline.from_pretrained(args.model, device="cpu")
        pipe(PROMPTS[0], steps=args.steps, seed=0)  # warm-up
        single = []
        for k in range(5):
            started = time.perf_counter()
            pipe(PROMPTS[k % len(PROMPTS)], steps=args.steps, seed=100 + k)
            single.append(time.perf_counter() - started)
        single_s = statistics.median(single)

        # 2. references: each distinct request made alone
        combos = [(prompt, seed) for prompt in PROMPTS for seed in range(1000, 1008)]
        references = []
        for prompt, seed in combos:
            image = pipe(prompt, steps=args.steps, seed=seed)[0]
            references.append((np.asarray(image), image.info["parameters"]))
        del pipe
        print(f"single Pipeline call: {single_s:.3f} s; {len(combos)} references made", file=sys.stderr, flush=True)

        # 3. the load
        run = Run(server.pid, args.total)
        rng = random.Random(0)
        started = time.perf_counter()
        rounds = 0
        while run.images < args.total and not run.bad:
            threads = []
            for c in range(args.clients):
                picks = [rng.randrange(len(combos)) for _ in range(args.requests)]
                thread = threading.Thread(target=client, args=(run, url, combos, picks, args.steps, random.Random(rounds * 1000 + c)))
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
            rounds += 1
            print(f"round {rounds}: {run.images} images, answers {run.status}", file=sys.stderr, flush=True)
        wall = time.perf_counter() - started
        memory_end = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)

    mismatched, worst = 0, 0
    for combo, b64, seed in run.results:
        image = Image.open(io.BytesIO(base64.b64decode(b64)))
        pixels, parameters = references[combo]
        got = np.asarray(image)
        if seed != combos[combo][1] or image.info.get("parameters") != parameters or not np.array_equal(got, pixels):
            mismatched += 1
            worst = max(worst, int(np.abs(got.astype(int) - pixels.astype(int)).max()) if got.shape == pixels.shape else 255)
    m50, mend = run.memory.get(50), run.memory.get(args.total)
    growth = (mend / m50 - 1) * 100 if m50 and mend else float("nan")
    throughput = len(run.latency) / wall
    numbers = {
        "clients": args.clients, "requests_per_client_per_round": args.requests, "rounds": rounds, "steps": args.steps,
        "queue_size": args.queue_size, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "images": run.images, "answers": run.status, "lost_or_crashed": len(run.bad), "mismatched_images": mismatched,
        "single_call_s": round(single_s, 3), "wall_s": round(wall, 1), "requests_per_s": round(throughput, 3),
        "single_call_rate_per_s": round(1 / single_s, 3),
        "latency_p50_s": round(percentile(run.latency, 50), 2), "latency_p95_s": round(percentile(run.latency, 95), 2),
        "end_to_end_p50_s": round(percentile(run.end_to_end, 50), 2), "end_to_end_p95_s": round(percentile(run.end_to_end, 95), 2),
        "rss_idle_mb": round(memory_idle, 1), "rss_after_50_mb": m50 and round(m50, 1),
        f"rss_after_{args.total}_mb": mend and round(mend, 1), "rss_end_mb": round(memory_end, 1),
        "rss_growth_50_to_total_pct": round(growth, 2),
    }
    print(json.dumps(numbers, indent=2))
    memory_line = f"{m50:.0f} MB / {mend:.0f} MB ({growth:+.1f}%)" if m50 and mend else "n/a (under 50 images)"
    print(f"""
| measure | value |
|---|---|
| single `Pipeline` call, 1 image, {args.steps} steps (median of 5) | {single_s:.2f} s ({1 / single_s:.2f} images/s) |
| server throughput, {args.clients} clients | {throughput:.2f} requests/s ({throughput * single_s:.2f}x the single-call rate) |
| latency of an accepted request (queue + generation), p50 / p95 | {numbers['latency_p50_s']} s / {numbers['latency_p95_s']} s |
| first try to image, 429 waits included, p50 / p95 | {numbers['end_to_end_p50_s']} s / {numbers['end_to_end_p95_s']} s |
| answers | {', '.join(f'{k}: {v}' for k, v in sorted(run.status.items()))} |
| lost or crashed / images unlike their lone request | {len(run.bad)} / {mismatched} of {run.images} |
| server RSS after 50 / {args.total} images | {memory_line} |""")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    for line in run.bad[:10]:
        print("BAD:", line, file=sys.stderr)
    memory_ok = not (m50 and mend) or abs(growth) <= 10
    ok = not run.bad and mismatched == 0 and memory_ok and set(run.status) <= {"200", "429"}
    print("PASS" if ok else f"FAIL (worst pixel difference {worst})", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
