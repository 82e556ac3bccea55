"""Load test of `tuneforge serve` against a one-request-at-a-time `transformers.pipeline` FastAPI
handler, on the same model, in the same run (issue 7).

    .venv/bin/python bench/serve_load.py --write-docs     # ~7 min on 2 cores

Both servers run as their own processes on loopback with the same torch thread count; the client
(this process, aiohttp) keeps ``--clients`` requests in flight until ``--requests`` have been
answered, each request one SST-2 dev sentence (cycled), after ``--warmup`` unmeasured requests.
A request counts as an error unless it gets a 200 with one result. Latency is client-side, from
sending to the full response. Goal: >= 3x the baseline's requests/s at a lower p99, with 0 errors.
The model is the `make demo` export (minilm-l6 + LoRA on SST-2); run `make demo` first.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import ROOT, write_section  # noqa: E402

KEY = "bench-key"


def dev_set() -> tuple[list[str], list[str]]:
    """SST-2 dev sentences and their gold label names."""
    with open(ROOT / "data" / "sst2" / "dev.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [("negative", "positive")[int(r["label"])] for r in rows]


def start(cmd: list[str], port: int, env: dict) -> subprocess.Popen:
    import urllib.request

    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not answer /health within 120 s")


async def load(url: str, texts: list[str], gold: list[str], *, clients: int, requests: int) -> dict:
    """Keep ``clients`` requests in flight until ``requests`` are answered; latency, errors, and the
    accuracy of the answers (every dev sentence is asked about at least once in 10,000 requests)."""
    import aiohttp

    latencies: list[float] = []
    answers: dict[int, set] = {}
    errors: list[str] = []
    counter = iter(range(requests))

    async def client(session):
        for i in counter:
            body = {"texts": [texts[i % len(texts)]]}
            t0 = time.perf_counter()
            try:
                async with session.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}) as resp:
                    payload = await resp.json()
                    ok = resp.status == 200 and len(payload.get("results", [])) == 1
                    if ok:
                        answers.setdefault(i % len(texts), set()).add(payload["results"][0]["label"])
                    else:
                        errors.append(f"{resp.status}: {str(payload)[:200]}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted, the run goes on
                errors.append(repr(exc)[:200])
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - t0
    latencies.sort()

    def pct(q):
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    asked = sorted(answers)
    return {"accuracy": round(sum(gold[i] in answers[i] for i in asked) / len(asked), 4) if asked else None,
            "sentences_asked": len(asked), "inconsistent": sum(len(answers[i]) > 1 for i in asked),
            "requests": requests, "ok": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(pct(0.50), 1), "p90_ms": round(pct(0.90), 1), "p99_ms": round(pct(0.99), 1),
            "max_ms": round(1000 * latencies[-1], 1) if latencies else None}


def measure(name: str, cmd: list[str], port: int, env: dict, texts: list[str], gold: list[str], args) -> dict:
    print(f"{name}: starting", flush=True)
    proc = start(cmd, port, env)
    try:
        url = f"http://127.0.0.1:{port}/v1/classify"
        asyncio.run(load(url, texts, gold, clients=args.clients, requests=args.warmup))
        result = asyncio.run(load(url, texts, gold, clients=args.clients, requests=args.requests))
        if name.startswith("tuneforge"):
            import urllib.request

            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            result["mean_batch_size"] = _mean_batch(metrics)
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{name}: {result}", flush=True)
    return result


def _mean_batch(metrics: str) -> float | None:
    values = {}
    for line in metrics.splitlines():
        if line.startswith("tuneforge_batch_size_sum") or line.startswith("tuneforge_batch_size_count"):
            name, value = line.split()
            values[name] = float(value)
    count = values.get("tuneforge_batch_size_count")
    return round(values["tuneforge_batch_size_sum"] / count, 1) if count else None


def doc_lines(report: dict) -> list[str]:
    a, b = report["args"], report["pipeline"]
    rows, verdicts = [], []
    for name, label in (("tuneforge_fp32", "fp32"), ("tuneforge_bf16", "bf16 autocast")):
        t = report[name]
        ratio = t["requests_per_s"] / b["requests_per_s"]
        met = ratio >= 3 and t["p99_ms"] < b["p99_ms"] and t["errors"] == 0 and b["errors"] == 0
        rows.append(f"| `tuneforge serve --dtype {name[-4:]}` ({label}) | {t['errors']} | **{t['requests_per_s']}** "
                    f"({ratio:.2f}x) | {t['p50_ms']} ms | {t['p90_ms']} ms | **{t['p99_ms']} ms** | "
                    f"{t.get('mean_batch_size')} | {t['accuracy']:.4f} |")
        verdicts.append(f"- `--dtype {name[-4:]}`: {ratio:.2f}x the requests/s, p99 {t['p99_ms']} ms against "
                        f"{b['p99_ms']} ms: goal **{'met' if met else 'NOT met'}**.")
    return [
        "## Serving under load: `tuneforge serve` vs a one-at-a-time `transformers.pipeline` handler "
        "(`bench/serve_load.py`)",
        "",
        f"The `make demo` SST-2 classifier (minilm-l6 + LoRA, merged export), {a['clients']} concurrent clients on "
        f"loopback, {a['requests']:,} requests of one SST-2 dev sentence each (after {a['warmup']} warm-up requests), "
        f"every server with {a['threads']} torch thread(s); client and servers share the machine's "
        f"{report['cpus']} cores. tuneforge: max batch {a['max_batch_size']}, max wait {a['max_wait_ms']} ms. "
        f"Measured in one run, at git revision `{report['git']}`, with "
        "`.venv/bin/python bench/serve_load.py --write-docs`. Accuracy: the answers the clients got, against "
        "the gold labels of the dev sentences (every one of the 872 was asked about).",
        "",
        "| server | errors | requests/s | p50 latency | p90 | p99 | mean batch | accuracy |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        f"| FastAPI + `transformers.pipeline`, one request at a time (fp32) | {b['errors']} | {b['requests_per_s']} | "
        f"{b['p50_ms']} ms | {b['p90_ms']} ms | {b['p99_ms']} ms | 1 | {b['accuracy']:.4f} |",
        "",
        "Goal: >= 3x the requests/s at a lower p99, 0 errors.",
        *verdicts,
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default="runs/sst2-minilm-lora/export")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch threads of each server (default: the cores, torch's own default)")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--only", choices=["tuneforge_fp32", "tuneforge_bf16", "pipeline"],
                   help="measure one server (exploration)")
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args()
    model = ROOT / args.model_dir
    if not (model / "config.json").exists():
        sys.exit(f"{model} is not an exported model; run `make demo` first (it writes runs/sst2-minilm-lora/export)")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    texts, gold = dev_set()
    py = sys.executable

    def tuneforge(dtype: str, port: int):
        return ([py, "-m", "tuneforge.cli", "serve", str(model), "--port", str(port), "--api-key", KEY,
                 "--threads", str(args.threads), "--max-batch-size", str(args.max_batch_size),
                 "--max-wait-ms", str(args.max_wait_ms), "--dtype", dtype], port)

    servers = {
        "tuneforge_fp32": tuneforge("fp32", 8711),
        "tuneforge_bf16": tuneforge("bf16", 8713),
        "pipeline": ([py, str(ROOT / "bench" / "_pipeline_server.py"), str(model), "8712", str(args.threads)], 8712),
    }
    report = {"args": vars(args), "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True).stdout.strip()}
    for name, (cmd, port) in servers.items():
        if args.only in (None, name):
            report[name] = measure(name, cmd, port, env, texts, gold, args)
    if args.write_docs and args.only is None:
        write_section("serve_load", doc_lines(report), report)


if __name__ == "__main__":
    main()
