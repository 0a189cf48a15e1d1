"""dvt-serve under load: exit-aware batching vs one request at a time, next to the bare early-exit engine.

    python benchmarks/bench_serving_load.py                      # T2T-ViT-12, random weights, 200 requests, 5 rounds
    python benchmarks/bench_serving_load.py --ckpt dvt_t2t_vit_12.ckpt --requests 400 --concurrency 1 8 32
    python benchmarks/bench_serving_load.py --quick              # a smoke run: 24 requests, 2 rounds, 1 and 8 clients

What runs, each in its own process:

* ``exit``: ``dvt-serve --batching exit --max_batch 32`` (one queue per exit, images of many requests batched at
  every exit, waiting at most ``--max_wait_ms``);
* ``request``: ``dvt-serve --batching request`` (each request through the engine on its own; every request here
  is one image, so it runs with ``--max_batch 1``, which only spares compiling batch sizes it never meets);
* ``engine``: the bare :class:`~dvt_ms.inference.engine.EarlyExitEngine` the server builds (same checkpoint,
  same thresholds) on the already decoded images: one image per call (latency) and ``--max_batch`` images per
  call (throughput); and one image per call from the file's bytes (decode, preprocess, engine: the work a
  server cannot skip);
* this process: the HTTP client (asyncio streams and hand-written HTTP/1.1 with keep-alive, one connection
  per client; no client library needed), on 127.0.0.1 and the same cores as the servers.

The model is ``--model`` (T2T-ViT-12) with the weights of ``--ckpt``, else random ones (``mindspore.set_seed(0)``).
The client sends ``--requests`` different photo-like images of ImageNet's shapes (500x375, 375x500, 500x333,
640x480; three in four as JPEG, one as PNG), one image per request, the same images in the same order to every
side. The thresholds are calibrated on exactly those images as the server decodes them (every exit's confidence
on every image, :func:`~dvt_ms.inference.thresholds.find_thresholds` for 60 / 25 / 15 % leaving at exits
1 / 2 / 3) and given to every side with ``--thresholds``; the table reports the shares each side actually took.

Each setting sends the fixed number of requests with at most ``c`` in flight (``--concurrency``, 1 / 8 / 32):

* closed loop (the throughput and latency figures of the targets): ``c`` clients, each sending its next
  request as soon as the previous one is answered; throughput = requests / (first send to last answer), latency
  = send to answer;
* open loop: requests arrive as a Poisson process at ``--load`` x the bare engine's batch-1 rate (measured in a
  warm-up round before the timed rounds; the same arrival times for both servers) and wait in the client for one
  of the ``c`` connections; latency = arrival to answer, so time spent queueing counts (no coordinated omission).

The sides alternate setting by setting, the order swapped every round (``--rounds``; figures are medians over
rounds; each round's latency percentiles are over its requests). Printed: a markdown table (img/s, p50 / p95 /
p99 latency, achieved GMAC/s = mean GMACs of the exits taken x img/s, exit shares), the fp32 GEMM rate of this
machine (a 1024^3 numpy product timed in this process between settings, every side idle), and the two targets:
exit-aware / per-request throughput at 32 clients (closed loop; target >= 1.3x) and exit-aware p50 at 1 client
(closed loop) / the bare engine's batch-1 p50 (target <= 1.10). Needs the serve extra (``pip install -e
".[serve]"``). Starting takes a few minutes: each server compiles every batch size it can run before ``/healthz``
says ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from timing import Worker, answer  # noqa: E402

SIDES = ("exit", "request")
LABELS = {"exit": "dvt-serve --batching exit", "request": "dvt-serve --batching request"}
TARGET_SHARES = (0.60, 0.25, 0.15)
SHAPES = ((500, 375), (375, 500), (500, 333), (640, 480))
GEMM = 1024
START_TIMEOUT = 1800.0  # seconds for a server to listen and compile
QUICK = {"requests": 24, "rounds": 2, "concurrency": [1, 8], "max_batch": 8}


# ---- the MindSpore side (worker processes) ----------------------------------------------------------------

def _settings(ckpt: str, model: str | None, thresholds: list[float]):
    """The settings ``dvt-serve --ckpt ... --thresholds ...`` parses, for building the same engine."""
    from dvt_ms.options import ServeSettings, parse_command

    argv = ["--ckpt", ckpt, "--thresholds", ",".join(map(repr, thresholds)), *(["--model", model] if model else [])]
    return parse_command(ServeSettings, argv, "bench_serving_load", "bench_serving_load")


def _between(confidences: np.ndarray, threshold: float) -> float:
    """``threshold`` moved halfway to the next lower confidence: the same images leave, and none sits within a
    rounding error of it (an exit batch's logits differ in the last bits with its size)."""
    below = confidences[confidences < threshold]
    return float((threshold + below.max()) / 2) if below.size else float(threshold)


def prepare(folder: str, model: str, ckpt: str | None, count: int, batch: int) -> int:
    """Write the checkpoint (random weights unless ``ckpt``) and the images, calibrate the thresholds on them as
    the server decodes them; answers the setup."""
    import mindspore as ms
    from PIL import Image

    import dvt_ms
    from dvt_ms.checkpoint import save_checkpoint
    from dvt_ms.data.folder import decode_image
    from dvt_ms.inference.thresholds import find_thresholds, simulate_exits, softmax_confidence
    from dvt_ms.serve.predictor import build_predictor
    from tests.helpers import photo_like

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    weights = "the weights of " + ckpt if ckpt else "random weights"
    if not ckpt:
        ms.set_seed(0)
        network = dvt_ms.create_model(model)
        ckpt = save_checkpoint(network, os.path.join(folder, "model.ckpt"), metadata={"model": model, "model_args": {}})
        del network
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "images"))
    files = []
    for i in range(count):
        width, height = SHAPES[i % len(SHAPES)]
        kind = "png" if i % 4 == 3 else "jpeg"
        path = os.path.join(folder, "images", f"{i:05d}.{'png' if kind == 'png' else 'jpg'}")
        Image.fromarray(photo_like(width, height, rng)).save(path, **({"quality": 90} if kind == "jpeg" else {}))
        files.append((path, f"image/{kind}"))
    predictor = build_predictor(_settings(ckpt, model, [1.0, 1.0]))
    inputs = np.stack([predictor.transform(decode_image(Path(path).read_bytes(), path)) for path, _ in files])
    np.save(os.path.join(folder, "inputs.npy"), inputs.astype(np.float32))
    engine = predictor.engine
    logits = [engine.all_exit_logits(inputs[i:i + batch]) for i in range(0, count, batch)]
    confidences = np.stack([np.concatenate([softmax_confidence(chunk[k])[0] for chunk in logits])
                            for k in range(engine.num_exits)])
    if engine.num_exits != len(TARGET_SHARES):
        raise SystemExit(f"this benchmark expects a 3-exit model, {model} has {engine.num_exits}")
    thresholds = find_thresholds(confidences, np.asarray(TARGET_SHARES, dtype=np.float32))
    thresholds = [_between(confidences[k], t) for k, t in enumerate(thresholds[:-1])]
    counts = np.bincount(simulate_exits(confidences, [*thresholds, -1e8]), minlength=engine.num_exits)
    answer({"ckpt": ckpt, "weights": weights, "files": files, "thresholds": thresholds,
            "counts": counts.tolist(), "cumulative_gflops": list(predictor.cumulative_gflops)})
    return 0


def _gemm_seconds() -> float:
    a = np.random.default_rng(0).standard_normal((GEMM, GEMM)).astype(np.float32)
    start = time.perf_counter()
    a @ a
    return time.perf_counter() - start


def engine_worker(folder: str, setup: dict, model: str | None, batch: int) -> int:
    """The bare engine: answer every ``round`` with the per-call times at batch 1 (on decoded images, and from
    the file's bytes: decode, preprocess, engine) and the time of the images at ``batch`` per call."""
    from dvt_ms.data.folder import decode_image
    from dvt_ms.serve.predictor import build_predictor

    predictor = build_predictor(_settings(setup["ckpt"], model, setup["thresholds"]))
    engine = predictor.engine
    files = [(Path(path).read_bytes(), path) for path, _ in setup["files"]]
    inputs = np.load(os.path.join(folder, "inputs.npy"))
    singles = [inputs[i:i + 1] for i in range(len(inputs))]
    batches = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
    for x in singles + batches:  # compile every shape the rounds meet
        engine(x)
    answer({"ready": True})
    for line in sys.stdin:
        if line.strip() != "round":
            break
        latencies, exits = [], np.zeros(engine.num_exits, np.int64)
        for x in singles:
            start = time.perf_counter()
            result = engine(x)
            latencies.append(time.perf_counter() - start)
            exits += result.counts
        from_bytes = []
        for data, name in files:
            start = time.perf_counter()
            engine(predictor.transform(decode_image(data, name))[None])
            from_bytes.append(time.perf_counter() - start)
        start = time.perf_counter()
        batch_exits = sum(engine(x).counts for x in batches)
        answer({"latencies": latencies, "exits": exits.tolist(), "batch_seconds": time.perf_counter() - start,
                "batch_exits": batch_exits.tolist(), "from_bytes": from_bytes})
    return 0


# ---- the servers ------------------------------------------------------------------------------------------

class Server:
    """``python -m dvt_ms serve --port 0`` in its own process; :attr:`host` / :attr:`port` once it listens."""

    def __init__(self, side: str, setup: dict, args: argparse.Namespace) -> None:
        self.side = side
        cmd = [sys.executable, "-m", "dvt_ms", "serve", "--ckpt", setup["ckpt"], "--host", "127.0.0.1",
               "--port", "0", "--batching", side, "--max_batch", str(args.max_batch if side == "exit" else 1),
               "--max_wait_ms", repr(args.max_wait_ms), "--thresholds", ",".join(map(repr, setup["thresholds"])),
               "--max_queue", str(max(256, 2 * max(args.concurrency))), *(["--model", args.model] if args.ckpt else [])]
        env = dict(os.environ, GLOG_v=os.environ.get("GLOG_v", "3"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env=env, cwd=ROOT)
        self.lines: list[str] = []
        self._listening: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.host, self.port = "", 0

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            found = re.search(r"listening on http://(127\.0\.0\.1):(\d+)", line)
            if found:
                self._listening.put(f"{found.group(1)}:{found.group(2)}")
        self._listening.put("")

    def _fail(self, why: str) -> None:
        raise SystemExit(f"the {self.side} server {why}:\n" + "".join(self.lines[-30:]))

    def wait_ready(self, deadline: float) -> None:
        """Wait until it listens and ``/healthz`` says 200."""
        try:
            address = self._listening.get(timeout=max(1.0, deadline - time.monotonic()))
        except queue.Empty:
            self._fail("did not start in time")
        if not address:
            self._fail(f"ended (exit code {self.process.wait()})")
        host, port = address.split(":")
        self.host, self.port = host, int(port)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"ended (exit code {self.process.returncode})")
            try:
                with urllib.request.urlopen(f"http://{address}/healthz", timeout=10) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        self._fail("was not ready in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---- the HTTP client --------------------------------------------------------------------------------------

async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the server closes the connection, of one HTTP/1.1 response."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split()[1])
    length, chunked, close = None, False, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding":
            chunked = "chunked" in value
        elif name == "connection":
            close = value == "close"
    if chunked:
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return status, b"".join(parts), close
    if length is None:
        return status, await reader.read(), True
    return status, await reader.readexactly(length), close


class Connection:
    """One keep-alive HTTP/1.1 connection posting images to ``/v1/classify``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.reader = self.writer = None

    async def post(self, body: bytes, content_type: str) -> tuple[int, bytes]:
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("ascii")
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: reconnect once
            if self.writer is None:
                await self.open()
            try:
                self.writer.write(head + body)
                await self.writer.drain()
                status, answer_body, close = await _read_response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
                continue
            if close:
                await self.close()
            return status, answer_body
        raise AssertionError("unreachable")


async def run_load(host: str, port: int, requests: list[tuple[bytes, str]], concurrency: int,
                   arrivals: list[float] | None) -> dict:
    """Send every request once with at most ``concurrency`` in flight: closed loop when ``arrivals`` is None,
    else each request arriving at its offset (seconds from the start) and waiting for a free connection."""
    connections = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in connections))
    work: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    exits: list[int] = []
    gmacs, errors = 0.0, []
    start = time.perf_counter()
    end = start

    async def dispatch() -> None:
        for i, offset in enumerate(arrivals or [None] * len(requests)):
            if offset is not None:
                await asyncio.sleep(max(0.0, start + offset - time.perf_counter()))
            work.put_nowait((i, None if offset is None else start + offset))
        for _ in connections:
            work.put_nowait(None)

    async def client(connection: Connection) -> None:
        nonlocal gmacs, end
        while (item := await work.get()) is not None:
            i, arrived = item
            sent = time.perf_counter()
            status, body = await connection.post(*requests[i])
            done = time.perf_counter()
            end = max(end, done)
            if status != 200:
                errors.append(f"{status} {body[:200]!r}")
                continue
            record = json.loads(body)
            latencies.append(done - (sent if arrived is None else arrived))
            exits.append(record["exit"])
            gmacs += record["gflops"]

    try:
        await asyncio.gather(dispatch(), *(client(c) for c in connections))
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    if errors:
        raise SystemExit(f"{len(errors)} of {len(requests)} requests failed, e.g. {errors[0]}")
    counts = np.bincount(np.asarray(exits) - 1, minlength=len(TARGET_SHARES))
    return {"seconds": end - start, "latencies": latencies, "exits": counts.tolist(), "gmacs": gmacs}


# ---- the report -------------------------------------------------------------------------------------------

def _percentiles(seconds: list[float]) -> list[float]:
    return [1e3 * float(np.percentile(seconds, q)) for q in (50, 95, 99)]


def _summary(runs: list[dict], count: int) -> dict:
    """Medians over rounds of img/s, p50 / p95 / p99 (ms) and GMAC/s; the exit shares of the last round."""
    rates = [count / run["seconds"] for run in runs]
    percentiles = [_percentiles(run["latencies"]) for run in runs]
    return {"rate": statistics.median(rates), "rates": rates,
            "p": [statistics.median(p[i] for p in percentiles) for i in range(3)], "p50s": [p[0] for p in percentiles],
            "gmac_s": statistics.median(run["gmacs"] / run["seconds"] for run in runs),
            "shares": [c / max(1, sum(runs[-1]["exits"])) for c in runs[-1]["exits"]]}


def _row(load: str, clients: str, side: str, s: dict) -> str:
    shares = " / ".join(f"{100 * x:.0f}" for x in s["shares"])
    p50, p95, p99 = (f"{x:.1f}" if x is not None else "-" for x in s["p"])
    return f"| {load} | {clients} | {side} | {s['rate']:.1f} | {p50} | {p95} | {p99} | {s['gmac_s']:.1f} | {shares} |"


def _engine_summaries(rounds: list[dict], setup: dict, batch: int) -> tuple[dict, dict, dict]:
    cumulative = np.asarray(setup["cumulative_gflops"])
    single, from_bytes = (_summary([{"seconds": sum(r[key]), "latencies": r[key], "exits": r["exits"],
                                     "gmacs": float(np.dot(r["exits"], cumulative))} for r in rounds],
                                   len(rounds[0]["latencies"])) for key in ("latencies", "from_bytes"))
    batched = _summary([{"seconds": r["batch_seconds"], "latencies": [r["batch_seconds"]],
                         "exits": r["batch_exits"], "gmacs": float(np.dot(r["batch_exits"], cumulative))}
                        for r in rounds], len(rounds[0]["latencies"]))
    calls = -(-len(rounds[0]["latencies"]) // batch)
    batched["p"] = [statistics.median(1e3 * r["batch_seconds"] / calls for r in rounds), None, None]
    return single, from_bytes, batched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dvt_t2t_vit_12")
    parser.add_argument("--ckpt", help="weights to serve (default: random weights)")
    parser.add_argument("--requests", type=int, default=200, help="requests per setting (each a different image)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="clients in flight at most")
    parser.add_argument("--load", type=float, default=0.75,
                        help="open loop: Poisson arrival rate as a fraction of the bare engine's batch-1 img/s")
    parser.add_argument("--max_batch", type=int, default=32,
                        help="dvt-serve --batching exit --max_batch, and the bare engine's throughput batch")
    parser.add_argument("--max_wait_ms", type=float, default=5.0, help="dvt-serve --batching exit --max_wait_ms")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()))
    parser.add_argument("--worker", choices=("prepare", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.worker == "prepare":
        return prepare(args.folder, args.model, args.ckpt, args.requests, args.max_batch)
    if args.worker == "engine":
        with open(os.path.join(args.folder, "setup.json"), encoding="utf-8") as f:
            setup = json.load(f)
        return engine_worker(args.folder, setup, args.model if args.ckpt else None, args.max_batch)

    folder = tempfile.mkdtemp(prefix="dvt_bench_load_")
    common = ["--folder", folder, "--model", args.model, "--requests", str(args.requests),
              "--max_batch", str(args.max_batch), *(["--ckpt", args.ckpt] if args.ckpt else [])]
    began = time.monotonic()
    print(f"{args.model}: writing {args.requests} images, calibrating the thresholds on them ...", flush=True)
    preparing = Worker("prepare", [sys.executable, __file__, "--worker", "prepare", *common])
    setup = preparing.read()
    preparing.close()
    with open(os.path.join(folder, "setup.json"), "w", encoding="utf-8") as f:
        json.dump(setup, f)
    requests = [(Path(path).read_bytes(), kind) for path, kind in setup["files"]]
    print(f"thresholds {', '.join(f'{t:.7g}' for t in setup['thresholds'])}: exits "
          f"{' / '.join(map(str, setup['counts']))} of {args.requests} images; starting the servers and the engine "
          "(each compiles its batch sizes) ...", flush=True)
    servers = {side: Server(side, setup, args) for side in SIDES}
    engine = Worker("engine", [sys.executable, __file__, "--worker", "engine", *common])
    try:
        engine.read()
        deadline = time.monotonic() + START_TIMEOUT
        for server in servers.values():
            server.wait_ready(deadline)
        calibration = engine.round()  # the batch-1 rate that sets the open loop's arrival rate (not reported)
        capacity = len(calibration["latencies"]) / sum(calibration["latencies"])
        rate = args.load * capacity
        arrivals = np.cumsum(np.random.default_rng(1).exponential(1.0 / rate, args.requests)).tolist()
        for server in servers.values():  # the first requests after compiling, at every concurrency: not timed
            for c in args.concurrency:
                asyncio.run(run_load(server.host, server.port, requests[: min(len(requests), 2 * c)], c, None))
        print(f"ready after {time.monotonic() - began:.0f} s; open loop at {rate:.1f} requests/s ({args.load:g} x the "
              f"bare engine's {capacity:.1f} img/s at batch 1)", flush=True)
        settings = [("closed", c) for c in args.concurrency] + [("open", c) for c in args.concurrency]
        runs: dict[tuple[str, str, int], list[dict]] = {(s, m, c): [] for s in SIDES for m, c in settings}
        engine_rounds, gemm = [], []
        for r in range(args.rounds):
            engine_rounds.append(engine.round())
            gemm.append(_gemm_seconds())
            for mode, c in settings:
                for side in SIDES if r % 2 == 0 else reversed(SIDES):
                    server = servers[side]
                    runs[side, mode, c].append(asyncio.run(run_load(
                        server.host, server.port, requests, c, arrivals if mode == "open" else None)))
                gemm.append(_gemm_seconds())
            closed = ", ".join(f"{side} c={c} {args.requests / runs[side, 'closed', c][-1]['seconds']:.1f}"
                               for c in args.concurrency for side in SIDES)
            print(f"round {r + 1}/{args.rounds} (closed loop img/s): {closed}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        engine.close()
        shutil.rmtree(folder, ignore_errors=True)

    summaries = {key: _summary(value, args.requests) for key, value in runs.items()}
    single, from_bytes, batched = _engine_summaries(engine_rounds, setup, args.max_batch)
    cumulative = setup["cumulative_gflops"]
    mean_gmacs = float(np.dot(setup["counts"], cumulative)) / args.requests
    gemm_rate = GEMM ** 3 / statistics.median(gemm) / 1e9
    print(f"\n{args.model}, {setup['weights']}, on this machine ({os.cpu_count()} CPUs, the client on the same cores); "
          f"{args.requests} requests of one image per setting, {args.rounds} rounds (medians); calibrated exits "
          f"{' / '.join(f'{100 * c / args.requests:.0f} %' for c in setup['counts'])}: {mean_gmacs:.3f} GMACs per "
          f"image (last exit {cumulative[-1]:.3f}); exit batching --max_batch {args.max_batch} --max_wait_ms "
          f"{args.max_wait_ms:g}; open loop: Poisson arrivals at {rate:.1f} requests/s\n")
    print("| load | clients | side | img/s | p50 ms | p95 ms | p99 ms | GMAC/s | exits 1 / 2 / 3 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, c in settings:
        for side in SIDES:
            print(_row(f"{mode} loop", str(c), LABELS[side], summaries[side, mode, c]))
    print(_row("-", "batch 1", "bare EarlyExitEngine", single))
    print(_row("-", "batch 1", "decode + preprocess + bare EarlyExitEngine", from_bytes))
    print(_row("-", f"batch {args.max_batch}", "bare EarlyExitEngine (p50: ms per call)", batched))
    print(f"| - | - | fp32 GEMM {GEMM}^3 (numpy) | - | - | - | - | {gemm_rate:.1f} | - |")

    many, one = max(args.concurrency), min(args.concurrency)
    exit_runs, request_runs = runs["exit", "closed", many], runs["request", "closed", many]
    ratio = summaries["exit", "closed", many]["rate"] / summaries["request", "closed", many]["rate"]
    per_round = statistics.median(q["seconds"] / e["seconds"] for e, q in zip(exit_runs, request_runs, strict=True))
    print(f"\nexit-aware / per-request throughput, closed loop, {many} clients: {ratio:.2f}x (median of per-round "
          f"ratios {per_round:.2f}x; target >= 1.3x)")
    latency = summaries["exit", "closed", one]["p"][0] / single["p"][0]
    print(f"exit-aware p50 at {one} client{'s' if one > 1 else ''} (closed loop) / bare engine p50 at batch 1: "
          f"{latency:.3f} ({summaries['exit', 'closed', one]['p'][0]:.1f} / {single['p'][0]:.1f} ms; target <= 1.10); "
          f"/ decode + preprocess + bare engine: {summaries['exit', 'closed', one]['p'][0] / from_bytes['p'][0]:.3f} "
          f"({from_bytes['p'][0]:.1f} ms)")
    print(f"achieved GMAC/s on this machine: exit-aware {summaries['exit', 'closed', many]['gmac_s']:.1f}, per-request "
          f"{summaries['request', 'closed', many]['gmac_s']:.1f} ({many} clients, closed loop), bare engine "
          f"{single['gmac_s']:.1f} (batch 1) / {batched['gmac_s']:.1f} (batch {args.max_batch}); fp32 GEMM "
          f"{gemm_rate:.1f}")
    print(f"(whole run {time.monotonic() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
