#!/usr/bin/env python3
"""Turns bench/growth.sh's raw results into growth.json and SVG charts (matplotlib).

growth.json holds, per sweep, one row per point with the figures the charts show:
  connections: ops/s, p50 and p99 (µs) for lib_chan and for Redis over TLS;
  names, value_size: per store, lookup and store ops/s, p99 (µs), the server's memory
  per name (bytes: its RSS after the lookup run less that of a server holding one
  16-byte name under the same load, over the names loaded) and the file's size per name.
"""

import argparse
import csv
import io
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def redis_row(text):
    """redis-benchmark --csv: "GET","rps","avg_latency_ms","min","p50","p95","p99","max"."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or len(rows[0]) < 7:
        return None
    r = rows[0]
    return {
        "ops_per_sec": float(r[1]),
        "p50_us": float(r[4]) * 1000,
        "p99_us": float(r[6]) * 1000,
    }


def tidy(raw):
    out = {"connections": [], "names": [], "value_size": []}
    by_conn = {}
    for r in raw:
        if r["sweep"] == "connections":
            row = by_conn.setdefault(r["x"], {"connections": r["x"]})
            if r["server"] == "lib_chan":
                b = r["bench"]
                row["lib_chan"] = {k: b[k] for k in ("ops_per_sec", "p50_us", "p99_us", "errors")}
            else:
                row["redis"] = redis_row(r["csv"])
        else:
            n = r["x"] if r["sweep"] == "names" else 1000
            # Beyond a server with one name under the same load (rss_base_kib), else
            # beyond the server before the run.
            base = r.get("rss_base_kib", r["rss_before_kib"])
            grown = max(r["rss_after_kib"] - base, 0) * 1024
            out[r["sweep"]].append(
                {
                    "store": r["store"],
                    ("names" if r["sweep"] == "names" else "value_bytes"): r["x"],
                    "lookup_ops_per_sec": r["lookup"]["ops_per_sec"],
                    "lookup_p99_us": r["lookup"]["p99_us"],
                    "store_ops_per_sec": r["store_op"]["ops_per_sec"],
                    "store_p99_us": r["store_op"]["p99_us"],
                    "memory_bytes_per_name": grown / n,
                    "file_bytes_per_name": (r["file_bytes"] / n) if r["file_bytes"] else None,
                    "errors": r["lookup"]["errors"] + r["store_op"]["errors"],
                }
            )
    out["connections"] = [by_conn[k] for k in sorted(by_conn)]
    return out


def charts(data, out_dir):
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "lib_chan"  # stable ids: diffs show data changes only
    made = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, metadata={"Date": None})
        plt.close(fig)
        made.append(path)

    conns = data["connections"]
    xs = [r["connections"] for r in conns]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for server, style, color in (("lib_chan", "o-", "tab:blue"), ("redis", "s--", "tab:orange")):
        pts = [(r["connections"], r[server]) for r in conns if r.get(server)]
        a.plot([x for x, _ in pts], [v["ops_per_sec"] for _, v in pts], style, color=color, label=server)
        b.plot([x for x, _ in pts], [v["p50_us"] for _, v in pts], style, color=color, label=f"{server} p50")
        b.plot(
            [x for x, _ in pts], [v["p99_us"] for _, v in pts], style,
            color=color, alpha=0.45, label=f"{server} p99",
        )
    a.set(xscale="log", xlabel="connections", ylabel="lookups per second", title="Throughput")
    b.set(xscale="log", yscale="log", xlabel="connections", ylabel="latency (µs)", title="Latency")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        ax.set_xticks(xs, [str(x) for x in xs])
    save(fig, "growth-connections.svg")

    for sweep, xkey, xlabel, fname in (
        ("names", "names", "names in the store", "growth-names.svg"),
        ("value_size", "value_bytes", "value size (bytes)", "growth-value-size.svg"),
    ):
        rows = data[sweep]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        for store, style, color in (("memory", "o-", "tab:blue"), ("file", "s--", "tab:green")):
            pts = sorted((r[xkey], r) for r in rows if r["store"] == store)
            x = [p for p, _ in pts]
            a.plot(x, [r["lookup_ops_per_sec"] for _, r in pts], style, color=color, label=f"{store}: lookup")
            a.plot(
                x, [r["store_ops_per_sec"] for _, r in pts], style,
                color=color, alpha=0.45, label=f"{store}: store",
            )
            b.plot(
                x, [r["memory_bytes_per_name"] for _, r in pts], style,
                color=color, label=f"{store}: server memory",
            )
            if store == "file":
                b.plot(x, [r["file_bytes_per_name"] or 0 for _, r in pts], "^:", color="tab:red", label="file: size on disk")
        a.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="operations per second", title="Rates")
        b.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="bytes per name", title="Space per name")
        for ax in (a, b):
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
        save(fig, fname)
    return made


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", required=True, help="growth.sh's JSON lines")
    p.add_argument("--out", required=True, help="directory for growth.json and the charts")
    p.add_argument("--seconds", type=float, required=True, help="seconds per run")
    p.add_argument("--command", required=True, help="the command that made the figures")
    args = p.parse_args()
    data = tidy(load(args.results))
    data["meta"] = {
        "command": args.command,
        "seconds_per_run": args.seconds,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "growth.json"), "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    for path in charts(data, args.out):
        print(path, file=sys.stderr)
    # A table on standard output, for the closing notes and the README.
    print("| connections | lib_chan ops/s | p50 µs | p99 µs | Redis ops/s | p50 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|")
    for r in data["connections"]:
        o, t = r.get("lib_chan") or {}, r.get("redis") or {}
        print(
            f"| {r['connections']} | {o.get('ops_per_sec', 0):.0f} | {o.get('p50_us', 0):.0f} | {o.get('p99_us', 0):.0f}"
            f" | {t.get('ops_per_sec', 0):.0f} | {t.get('p50_us', 0):.0f} | {t.get('p99_us', 0):.0f} |"
        )
    for sweep, xkey in (("names", "names"), ("value_size", "value_bytes")):
        print()
        print(f"| store | {xkey} | lookup ops/s | store ops/s | memory B/name | file B/name |")
        print("|---|---|---|---|---|---|")
        for r in data[sweep]:
            fb = r["file_bytes_per_name"]
            print(
                f"| {r['store']} | {r[xkey]} | {r['lookup_ops_per_sec']:.0f} | {r['store_ops_per_sec']:.0f}"
                f" | {r['memory_bytes_per_name']:.0f} | {'-' if fb is None else f'{fb:.0f}'} |"
            )


if __name__ == "__main__":
    main()
