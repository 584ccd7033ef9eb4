"""Load test of `infire serve` under hostile traffic: flood, burst, slowloris, disconnect.

Starts the real server (CPU, default model unless --model) twice: once with admission limits
(--max-waiting, --max-num-seqs) for the flood, burst and disconnect scenarios, once with short
connection limits (--header-timeout, --body-timeout, --max-connections) for slowloris. Clients
are raw HTTP/1.1 over asyncio streams, so the test controls every byte and every timing.

- flood: requests carrying 200,000 prompts each, and a wave of small requests far past
  --max-waiting, at once; a normal streamed request starts meanwhile (retrying on 429).
  Measures how fast the refusals (400 / 429) come, the most sequences seen waiting (polling
  /metrics), and the normal request's TTFT and total time against an idle server.
- burst: N simultaneous requests: at most max-waiting + max-num-seqs admitted, the rest 429
  with Retry-After, every admitted one completes with all its tokens, none lost.
- slowloris: idle connections, headers sent byte by byte, bodies sent byte by byte: when each is
  cut (header / body timeout), that connections past --max-connections get 503, and a normal
  client's request meanwhile.
- disconnect: streaming clients that vanish after a few tokens while others stream on: how fast
  the engine aborts them (running sequences in /metrics), that the others get every token, and
  that running, waiting and KV blocks in use all go back to 0.

Every invariant is checked; the script prints a table, writes JSON (bench/results/load_cpu.json
by default) and exits 1 if any invariant failed. --quick is a seconds-long version for the test
suite (tests/test_load_script.py).

    python bench/load.py --machine "2-core build machine"
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "load"
PROMPT = "Write a short story about a robot who learns to paint."


@dataclass
class Sizes:
    """The scenario sizes of a full run or of --quick."""

    max_waiting: int
    max_num_seqs: int
    flood_huge: int  # requests of 200,000 prompts each
    flood_small: int  # small requests in the flood's wave
    burst: int
    burst_tokens: int
    normal_tokens: int
    vanishing: int
    keepers: int
    keeper_tokens: int
    max_connections: int
    timeout_s: float
    idle_runs: int


FULL = Sizes(8, 16, 8, 400, 256, 32, 16, 16, 8, 32, 128, 2.0, 5)
QUICK = Sizes(4, 8, 1, 40, 24, 8, 8, 3, 2, 12, 12, 2.0, 1)


# ---- HTTP over asyncio streams ----------------------------------------------------------


@dataclass
class Reply:
    status: int  # 0: no response (connection failed, reset or closed early)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0  # from the start of the connection to the whole response
    connect: float = 0.0  # of which connecting took this long
    error: str = ""


def head(method: str, path: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before a response")
    status = int(status_line.split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def body_chunks(reader: asyncio.StreamReader, headers: dict[str, str]):
    """The response body as it arrives (chunked transfer coding undone)."""
    if "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    elif "chunked" in headers.get("transfer-encoding", ""):
        while size := int((await reader.readline()).split(b";")[0], 16):
            yield await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        while data := await reader.read(1 << 16):
            yield data


async def request(port: int, method: str, path: str, body: bytes | None = None) -> Reply:
    """One request on a fresh connection; never raises for network failures."""
    start = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connected = time.perf_counter() - start
        writer.write(head(method, path, body) + (body or b""))
        status, headers = await read_head(reader)
        data = b"".join([c async for c in body_chunks(reader, headers)])
        return Reply(status, headers, data, time.perf_counter() - start, connected)
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        return Reply(0, seconds=time.perf_counter() - start, error=repr(e))
    finally:
        if writer is not None:
            writer.close()


def completion(prompt, max_tokens: int, stream: bool = False) -> bytes:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def completion_tokens(reply: Reply) -> int | None:
    try:
        return json.loads(reply.body)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Stream:
    status: int = 0
    ttft: float = float("nan")
    total: float = float("nan")
    events: int = 0  # SSE chunks carrying choices
    tokens: int | None = None  # usage.completion_tokens of the last chunk
    done: bool = False  # `data: [DONE]` arrived
    error: str = ""


async def stream(port: int, max_tokens: int, vanish_after: int | None = None) -> Stream:
    """One streamed completion. With `vanish_after`, the client drops the connection (no
    close handshake) once that many token events have arrived."""
    out = Stream()
    start = time.perf_counter()
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = completion(PROMPT, max_tokens, stream=True)
        writer.write(head("POST", "/v1/completions", body) + body)
        out.status, headers = await read_head(reader)
        pending = b""
        async for data in body_chunks(reader, headers):
            if out.status != 200:
                continue
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if line.startswith(b"data: [DONE]"):
                    out.done = True
                elif line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event.get("choices"):
                        out.events += 1
                        if out.events == 1:
                            out.ttft = time.perf_counter() - start
                    if event.get("usage"):
                        out.tokens = event["usage"]["completion_tokens"]
            if vanish_after is not None and out.events >= vanish_after:
                writer.transport.abort()
                writer = None
                break
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
        out.error = repr(e)
    finally:
        out.total = time.perf_counter() - start
        if writer is not None:
            writer.close()
    return out


async def stream_admitted(port: int, max_tokens: int, vanish_after: int | None = None) -> Stream:
    """`stream`, retried every 50 ms while the server answers 429 (for up to a minute)."""
    deadline = time.perf_counter() + 60
    while True:
        out = await stream(port, max_tokens, vanish_after)
        if out.status != 429 or time.perf_counter() > deadline:
            return out
        await asyncio.sleep(0.05)


async def metrics(port: int) -> dict[str, float]:
    reply = await request(port, "GET", "/metrics")
    if reply.status != 200:
        raise RuntimeError(f"/metrics answered {reply.status}: {reply.error or reply.body[:200]}")
    out = {}
    for line in reply.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            # The server's one model: its `model` label is left out of the name.
            name = re.sub(r'\{model="[^"]*"\}$', "", name)
            out[name] = float(value)
    return out


class Poller:
    """Polls /metrics every 20 ms, keeping the most sequences seen waiting and running."""

    def __init__(self, port: int) -> None:
        self.port, self.max_waiting, self.max_running, self.samples = port, 0, 0, 0
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        while True:
            try:
                m = await metrics(self.port)
            except RuntimeError:  # a 503 while connections are full: try again
                await asyncio.sleep(0.02)
                continue
            self.samples += 1
            self.max_waiting = max(self.max_waiting, int(m["infire_num_requests_waiting"]))
            self.max_running = max(self.max_running, int(m["infire_num_requests_running"]))
            await asyncio.sleep(0.02)

    async def stop(self) -> dict:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        return {
            "max_waiting_seen": self.max_waiting,
            "max_running_seen": self.max_running,
            "metrics_samples": self.samples,
        }


async def drained(port: int, timeout: float = 30.0) -> dict:
    """Waits until nothing runs or waits and no KV block is in use; returns the last gauges
    and how long that took (`drained: false` if it never happened within `timeout`)."""
    start = time.perf_counter()
    while True:
        m = await metrics(port)
        gauges = {
            "running": int(m["infire_num_requests_running"]),
            "waiting": int(m["infire_num_requests_waiting"]),
            "kv_blocks_used": int(m["infire_kv_cache_blocks_used"]),
        }
        idle = not any(gauges.values())
        if idle or time.perf_counter() - start > timeout:
            return {**gauges, "drained": idle, "drain_s": round(time.perf_counter() - start, 3)}
        await asyncio.sleep(0.05)


# ---- the server --------------------------------------------------------------------------


class Server:
    """`infire serve` in a child process on a free port, until stopped."""

    def __init__(self, model: str | None, flags: dict) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.flags = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
        cmd = [sys.executable, "-m", "infire", "serve", "--port", str(self.port)]
        cmd += ["--served-model-name", MODEL, "--device", "cpu", *self.flags]
        if model:
            cmd += ["--model", model]
        self.log = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if k != "INFIRE_API_KEY"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)

    async def ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log.read()!r}")
            if (await request(self.port, "GET", "/health")).status == 200:
                return
            await asyncio.sleep(0.2)
        raise RuntimeError("server not healthy in 120 s")

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- scenarios ---------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def idle_baseline(port: int, sz: Sizes) -> dict:
    """The normal request on an idle server: median TTFT and total of a few runs."""
    await stream(port, sz.normal_tokens)  # warm-up
    runs = [await stream(port, sz.normal_tokens) for _ in range(sz.idle_runs)]
    ok = all(r.status == 200 and r.tokens == sz.normal_tokens for r in runs)
    return {
        "served": ok,
        "ttft_ms": ms(statistics.median(r.ttft for r in runs)),
        "total_ms": ms(statistics.median(r.total for r in runs)),
    }


async def normal_with_retry(port: int, sz: Sizes, delay: float) -> dict:
    """The normal request, started after `delay`, retried every 100 ms while it gets 429."""
    await asyncio.sleep(delay)
    start = time.perf_counter()
    attempts = 0
    while True:
        attempts += 1
        r = await stream(port, sz.normal_tokens)
        if r.status != 429 or time.perf_counter() - start > 60:
            break
        await asyncio.sleep(0.1)
    return {
        "served": r.status == 200 and r.tokens == sz.normal_tokens and r.done,
        "status": r.status,
        "attempts": attempts,
        "ttft_ms": ms(r.ttft),  # of the admitted attempt
        "total_ms": ms(time.perf_counter() - start),  # from the first attempt
    }


async def flood(port: int, sz: Sizes) -> dict:
    huge = completion([[1]] * 200_000, 1)
    small = [completion(f"{PROMPT} ({i})", 8) for i in range(sz.flood_small)]
    poller = Poller(port)
    normal = asyncio.create_task(normal_with_retry(port, sz, 0.05))
    huge_replies, small_replies = await asyncio.gather(
        asyncio.gather(
            *(request(port, "POST", "/v1/completions", huge) for _ in range(sz.flood_huge))
        ),
        asyncio.gather(*(request(port, "POST", "/v1/completions", b) for b in small)),
    )
    normal_result = await normal
    polled = await poller.stop()
    after = await drained(port)
    admitted = [r for r in small_replies if r.status == 200]
    refused = [r for r in small_replies if r.status == 429]
    limit = sz.max_waiting + sz.max_num_seqs
    return {
        "huge_requests": sz.flood_huge,
        "huge_prompts_each": 200_000,
        "huge_body_mb": round(len(huge) / 1e6, 2),
        "huge_statuses": sorted({r.status for r in huge_replies}),
        "huge_refusal_ms_max": ms(max(r.seconds for r in huge_replies)),
        "small_requests": sz.flood_small,
        "admitted": len(admitted),
        "refused_429": len(refused),
        "other_statuses": sorted({r.status for r in small_replies} - {200, 429}),
        "admitted_limit": limit,
        "admitted_complete": all(completion_tokens(r) == 8 for r in admitted),
        "refusal_ms_p50": ms(pct([r.seconds for r in refused], 50)),
        "refusal_ms_p99": ms(pct([r.seconds for r in refused], 99)),
        "refusal_ms_max": ms(max((r.seconds for r in refused), default=float("nan"))),
        "connect_ms_p50": ms(pct([r.connect for r in small_replies], 50)),
        "connect_ms_p99": ms(pct([r.connect for r in small_replies], 99)),
        "refusal_after_connect_ms_p50": ms(pct([r.seconds - r.connect for r in refused], 50)),
        "refusal_after_connect_ms_p99": ms(pct([r.seconds - r.connect for r in refused], 99)),
        "max_waiting": sz.max_waiting,
        "max_num_seqs": sz.max_num_seqs,
        **polled,
        "normal": normal_result,
        "after": after,
    }


async def burst(port: int, sz: Sizes) -> dict:
    """N requests written at the same instant on connections opened beforehand."""
    body = completion(PROMPT, sz.burst_tokens)
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(sz.burst)]
    poller = Poller(port)
    await asyncio.sleep(0.05)
    start = time.perf_counter()

    async def one(reader, writer) -> Reply:
        try:
            writer.write(head("POST", "/v1/completions", body) + body)
            status, headers = await read_head(reader)
            data = b"".join([c async for c in body_chunks(reader, headers)])
            return Reply(status, headers, data, time.perf_counter() - start)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
            return Reply(0, seconds=time.perf_counter() - start, error=repr(e))
        finally:
            writer.close()

    replies = await asyncio.gather(*(one(r, w) for r, w in conns))
    wall = time.perf_counter() - start
    polled = await poller.stop()
    after = await drained(port)
    admitted = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 429]
    first_done = min((r.seconds for r in admitted), default=float("nan"))
    return {
        "requests": sz.burst,
        "max_waiting": sz.max_waiting,
        "max_num_seqs": sz.max_num_seqs,
        "admitted": len(admitted),
        "admitted_limit": sz.max_waiting + sz.max_num_seqs,
        "refused_429": len(refused),
        "refused_with_retry_after": sum("retry-after" in r.headers for r in refused),
        "lost": sz.burst - len(admitted) - len(refused),
        "errors": sorted({r.error or str(r.status) for r in replies if r.status not in (200, 429)}),
        "tokens_each": sz.burst_tokens,
        "admitted_complete": all(completion_tokens(r) == sz.burst_tokens for r in admitted),
        "refusal_ms_p50": ms(pct([r.seconds for r in refused], 50)),
        "refusal_ms_max": ms(max((r.seconds for r in refused), default=float("nan"))),
        # Refusals all came before any admitted request finished: nothing left the engine
        # during the burst, so the admitted count is the limit's to explain alone.
        "refusals_before_first_completion": all(r.seconds < first_done for r in refused),
        "all_done_s": round(wall, 2),
        **polled,
        "after": after,
    }


async def disconnect(port: int, sz: Sizes) -> dict:
    # The vanishing streams ask for so many tokens that, were they not aborted, they would hold
    # their sequences and KV blocks for minutes: `drained` (30 s) would then fail.
    long_tokens = 4000
    keepers = [
        asyncio.create_task(stream_admitted(port, sz.keeper_tokens)) for _ in range(sz.keepers)
    ]
    vanish = [
        asyncio.create_task(stream_admitted(port, long_tokens, vanish_after=3))
        for _ in range(sz.vanishing)
    ]
    gone = await asyncio.gather(*vanish)
    vanished_at = time.perf_counter()
    running = []
    abort_s = None
    while time.perf_counter() - vanished_at < 30:
        m = await metrics(port)
        running.append(int(m["infire_num_requests_running"]))
        if running[-1] <= sz.keepers:
            abort_s = time.perf_counter() - vanished_at
            break
        await asyncio.sleep(0.01)
    kept = await asyncio.gather(*keepers)
    after = await drained(port)
    return {
        "vanishing": sz.vanishing,
        "vanished_after_events": 3,
        "vanishing_got_events": all(g.events >= 3 for g in gone),
        "vanishing_requested_tokens": long_tokens,
        "keepers": sz.keepers,
        "keeper_tokens": sz.keeper_tokens,
        "running_before_abort": max(running, default=0),
        "aborted_within_ms": ms(abort_s) if abort_s is not None else None,
        "keepers_complete": all(
            k.status == 200 and k.tokens == sz.keeper_tokens and k.done for k in kept
        ),
        "keeper_total_ms_max": ms(max(k.total for k in kept)),
        "after": after,
    }


async def attacker(port: int, kind: str, timeout_s: float) -> dict:
    """One slow client: `idle` sends nothing, `header` sends its headers a byte every 50 ms,
    `body` sends whole headers then its body a byte every 50 ms. Returns when the server cut it
    (EOF, reset or a response) and with what status."""
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = {
        "idle": b"",
        "header": b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000,
        "body": head("POST", "/v1/completions", b"x" * 1000) + b"x" * 1000,
    }[kind]
    if kind == "body":
        cut = payload.index(b"\r\n\r\n") + 4
        writer.write(payload[:cut])
        payload = payload[cut:]

    async def drip() -> None:
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    status, error = 0, ""
    try:
        data = await asyncio.wait_for(reader.read(4096), timeout_s * 10 + 10)
        if data.startswith(b"HTTP/1.1 "):
            status = int(data.split()[1])
    except (OSError, ConnectionError) as e:
        error = type(e).__name__
    except asyncio.TimeoutError:
        error = "not cut"
    cut_at = time.perf_counter()
    dripping.cancel()
    try:
        await dripping
    except (asyncio.CancelledError, OSError, ConnectionError):
        pass
    writer.transport.abort()
    return {
        "kind": kind,
        "cut_s": cut_at - start,
        "cut_at": cut_at,
        "status": status,
        "cut": error != "not cut",
    }


async def slowloris(port: int, sz: Sizes) -> dict:
    n_attackers = sz.max_connections - 4  # room for the normal client and the fillers
    kinds = ["idle", "header", "body"]
    attackers = [
        asyncio.create_task(attacker(port, kinds[i % 3], sz.timeout_s)) for i in range(n_attackers)
    ]
    await asyncio.sleep(0.1)
    # Fill the last places, then every connection past the limit must get 503.
    fillers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await asyncio.sleep(0.2)  # until the server has accepted them
    probes = [await request(port, "GET", "/health") for _ in range(4)]
    for _, w in fillers:
        w.transport.abort()
    await asyncio.sleep(0.1)
    normal_start = time.perf_counter()
    normal = await stream(port, sz.normal_tokens)
    results = await asyncio.gather(*attackers)
    # Attackers still connected when the normal request got its first token.
    open_at_normal = sum(r["cut_at"] > normal_start + normal.ttft for r in results)
    after = await request(port, "GET", "/health")
    by_kind = {}
    for kind in kinds:
        rs = [r for r in results if r["kind"] == kind]
        by_kind[kind] = {
            "connections": len(rs),
            "all_cut": all(r["cut"] for r in rs),
            "cut_s_min": round(min(r["cut_s"] for r in rs), 2),
            "cut_s_max": round(max(r["cut_s"] for r in rs), 2),
            "statuses": sorted({r["status"] for r in rs}),
        }
    return {
        "max_connections": sz.max_connections,
        "header_timeout_s": sz.timeout_s,
        "body_timeout_s": sz.timeout_s,
        "attackers": n_attackers,
        "by_kind": by_kind,
        "over_limit_probes": len(probes),
        "over_limit_statuses": sorted({p.status for p in probes}),
        "normal": {
            "served": normal.status == 200 and normal.tokens == sz.normal_tokens and normal.done,
            "status": normal.status,
            "ttft_ms": ms(normal.ttft),
            "total_ms": ms(normal.total),
            "attackers_open_meanwhile": open_at_normal,
        },
        "health_after": after.status,
    }


# ---- invariants, table, main -------------------------------------------------------------


def invariants(r: dict) -> dict[str, bool]:
    f, b, s, d = r["flood"], r["burst"], r["slowloris"], r["disconnect"]
    return {
        "idle: normal request served": r["idle"]["served"],
        "flood: huge prompt lists refused with 400": f["huge_statuses"] == [400],
        "flood: only 200 or 429": not f["other_statuses"],
        "flood: admitted <= max_waiting + max_num_seqs": f["admitted"] <= f["admitted_limit"],
        "flood: waiting never above max_waiting": f["max_waiting_seen"] <= f["max_waiting"],
        "flood: every admitted request complete": f["admitted_complete"],
        "flood: normal request served": f["normal"]["served"],
        "flood: engine drained, no KV block in use": f["after"]["drained"],
        "burst: admitted <= max_waiting + max_num_seqs": b["admitted"] <= b["admitted_limit"],
        "burst: waiting never above max_waiting": b["max_waiting_seen"] <= b["max_waiting"],
        "burst: none lost (every reply 200 or 429)": b["lost"] == 0,
        "burst: every 429 has Retry-After": b["refused_with_retry_after"] == b["refused_429"],
        "burst: every admitted request complete": b["admitted_complete"],
        "burst: engine drained, no KV block in use": b["after"]["drained"],
        "slowloris: every slow connection cut": all(k["all_cut"] for k in s["by_kind"].values()),
        "slowloris: slow bodies get 408": s["by_kind"]["body"]["statuses"] == [408],
        "slowloris: connections past the limit get 503": s["over_limit_statuses"] == [503],
        "slowloris: normal request served": s["normal"]["served"],
        "slowloris: served after the attack": s["health_after"] == 200,
        "disconnect: vanishing streams served first": d["vanishing_got_events"],
        "disconnect: vanished streams aborted": d["aborted_within_ms"] is not None,
        "disconnect: other streams got every token": d["keepers_complete"],
        "disconnect: engine drained, no KV block in use": d["after"]["drained"],
    }


def print_table(r: dict) -> None:
    f, b, s, d, idle = r["flood"], r["burst"], r["slowloris"], r["disconnect"], r["idle"]
    rows = [
        ("idle", "normal request TTFT / total", f"{idle['ttft_ms']} / {idle['total_ms']} ms"),
        (
            "flood",
            f"{f['huge_requests']} × 200k prompts ({f['huge_body_mb']} MB)",
            f"{f['huge_statuses']} in ≤ {f['huge_refusal_ms_max']} ms",
        ),
        (
            "flood",
            f"{f['small_requests']} requests at once",
            f"{f['admitted']} admitted (limit {f['admitted_limit']}), {f['refused_429']} × 429 "
            f"in p50 {f['refusal_ms_p50']} / p99 {f['refusal_ms_p99']} ms",
        ),
        ("flood", "most waiting seen", f"{f['max_waiting_seen']} (max-waiting {f['max_waiting']})"),
        (
            "flood",
            "normal request meanwhile",
            f"{f['normal']['attempts']} attempt(s), TTFT {f['normal']['ttft_ms']} ms, "
            f"total {f['normal']['total_ms']} ms",
        ),
        (
            "burst",
            f"{b['requests']} simultaneous, {b['tokens_each']} tokens",
            f"{b['admitted']} admitted (limit {b['admitted_limit']}), {b['refused_429']} × 429 "
            f"in p50 {b['refusal_ms_p50']} / max {b['refusal_ms_max']} ms, {b['lost']} lost",
        ),
        ("burst", "most waiting seen", f"{b['max_waiting_seen']} (max-waiting {b['max_waiting']})"),
    ]
    for kind, k in s["by_kind"].items():
        rows.append(
            (
                "slowloris",
                f"{k['connections']} {kind} connections",
                f"cut after {k['cut_s_min']}–{k['cut_s_max']} s (timeout {s['header_timeout_s']}"
                f" s), statuses {k['statuses']}",
            )
        )
    rows += [
        (
            "slowloris",
            f"connections past {s['max_connections']}",
            f"{s['over_limit_statuses']} ({s['over_limit_probes']} probes)",
        ),
        (
            "slowloris",
            "normal request meanwhile",
            f"TTFT {s['normal']['ttft_ms']} ms, total {s['normal']['total_ms']} ms "
            f"({s['normal']['attackers_open_meanwhile']} attackers open at its first token)",
        ),
        (
            "disconnect",
            f"{d['vanishing']} streams vanish, {d['keepers']} stream on",
            f"aborted within {d['aborted_within_ms']} ms; keepers complete: "
            f"{d['keepers_complete']}; after: {d['after']}",
        ),
        ("server", "peak RSS", f"{r['server_peak_rss_mb']} MB"),
    ]
    width = max(len(a) + len(b) for a, b, _ in rows) + 3
    for scenario, what, figure in rows:
        print(f"{scenario:<10} {what:<{width - 10}} {figure}")


async def run(args) -> dict:
    sz = QUICK if args.quick else FULL
    limits = {"max-waiting": sz.max_waiting, "max-num-seqs": sz.max_num_seqs}
    server = Server(args.model, limits)
    try:
        await server.ready()
        out = {"admission_server_flags": server.flags}
        out["idle"] = await idle_baseline(server.port, sz)
        out["flood"] = await flood(server.port, sz)
        out["burst"] = await burst(server.port, sz)
        out["disconnect"] = await disconnect(server.port, sz)
        out["server_peak_rss_mb"] = server.peak_rss_mb()
    finally:
        server.stop()
    conn_limits = {
        "header-timeout": sz.timeout_s,
        "body-timeout": sz.timeout_s,
        "max-connections": sz.max_connections,
    }
    server = Server(args.model, conn_limits)
    try:
        await server.ready()
        out["connection_server_flags"] = server.flags
        out["slowloris"] = await slowloris(server.port, sz)
    finally:
        server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="default: the server's default model")
    ap.add_argument("--quick", action="store_true", help="seconds-long sizes, for the tests")
    ap.add_argument("--machine", default="unnamed machine", help="named in the JSON")
    ap.add_argument("--out", default=None, help="default: bench/results/load_cpu.json")
    args = ap.parse_args()
    started = time.perf_counter()
    result = asyncio.run(run(args))
    checks = invariants(result)
    result = {
        "bench": "load",
        "command": shlex.join(["python", "bench/load.py", *sys.argv[1:]]),
        "machine": args.machine,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "quick": args.quick,
        "wall_s": round(time.perf_counter() - started, 1),
        **result,
        "invariants": checks,
    }
    print_table(result)
    failed = [name for name, ok in checks.items() if not ok]
    for name in failed:
        print(f"FAILED: {name}")
    print(f"{len(checks) - len(failed)}/{len(checks)} invariants hold; {result['wall_s']} s")
    out = Path(args.out or Path(__file__).parent / "results" / "load_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
