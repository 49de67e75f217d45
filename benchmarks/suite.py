"""Every benchmark in one run: one table of ratios against baselines run in the same process.

``scripts/bench.sh`` runs this after setting the machine up. In order:

- ``launch_hub``: launches through the hub against JupyterHub's DockerSpawner
  with the same image (cold cached launch; rows other benchmarks add there,
  such as a warm server's, come along);
- ``launch_cached``: a runner's cached launch against ``docker run`` of the
  same image;
- ``build_first``: a first launch (real build) against bare ``repo2docker`` +
  ``docker run``, and a notebook-only relaunch against that rebuild;
- ``load``: the burst of launches on runner hosts (``benchmarks/load.py``), at
  the default scale (2 hosts, 10 runners, 100 launches), ``--load-full`` for
  5 hosts, 50 runners, 500 launches, ``--load-quick`` for the smallest.

A ratio is ours / baseline (lower is better), each pair measured alternately in
this run, so that a slow or busy machine slows both sides. A benchmark that
cannot run (a missing service) fails the command; a slow result never does.
Writes everything to ``benchmarks/results/<UTC date-time>.json``.

Usage: ``.venv/bin/python -m benchmarks.suite [--runs N] [--build-runs N] [--latency S]
[--load-quick | --load-full | --no-load] [--only NAME ...]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = ("launch_hub", "launch_cached", "build_first", "load")


# launch_hub's rows, named and judged as the issue does (DockerSpawner is the baseline)
_HUB_ROWS = {"booklab hot (warm server)": ("hot launch (warm server) through the hub", 0.5),
             "booklab cold (cached image)": ("cold cached launch through the hub", 0.65),
             "booklab cold, no prestart": ("cold cached launch, prestart off", None)}


def run_launch_hub(args) -> list[dict]:
    from benchmarks import launch_hub

    result = launch_hub.run(args.runs, args.latency)
    rows = {r["name"]: r for r in result["rows"]}
    base = rows["dockerspawner"]["median_s"]
    return [{"row": label, "ours_s": rows[name]["median_s"], "baseline": "DockerSpawner",
             "baseline_s": base, "target": target, "runs": args.runs,
             "start_phase_s": rows[name]["start_phase_median_s"],
             "gitlab_latency_s": args.latency}
            for name, (label, target) in _HUB_ROWS.items()]


def run_launch_cached(args) -> list[dict]:
    from benchmarks import launch_cached

    return asyncio.run(launch_cached.run(args.runs))


def run_build_first(args) -> list[dict]:
    from benchmarks import build_first

    return asyncio.run(build_first.run(args.build_runs))


def run_load(args) -> dict:
    from benchmarks import load

    scale = "quick" if args.load_quick else "full" if args.load_full else "default"
    out = load.results(*load.SCALES[scale], spawn_limit=args.spawn_limit)
    load.report(out)
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':14s} {'row':44s} {'ours':>8s} {'baseline':>22s} "
             f"{'ratio':>6s} {'target':>7s}",
             "-" * 106]
    for r in rows:
        ratio = r["ours_s"] / r["baseline_s"] if r.get("baseline_s") else float("nan")
        target = f"<={r['target']:.2f}" if r.get("target") else ""
        base = f"{r['baseline']} {r['baseline_s']:.2f} s"
        lines.append(f"{r['benchmark']:14s} {r['row'][:44]:44s} {r['ours_s']:7.2f}s "
                     f"{base:>22s} {ratio:6.2f} {target:>7s}")
    return "\n".join(lines)


def load_lines(out: dict) -> str:
    sc, api, rss = out["scale"], out["hub_api_ms"], out["runner_rss_mb_idle_after"] or {}
    procs = ", ".join(f"{name} {p['cpu_s_per_100_launches']} CPU s/100 launches, "
                      f"+{p['rss_mb_growth_per_100_running']} MB/100 running"
                      for name, p in out["processes"].items())
    return "\n".join([
        f"load {sc['hosts']} hosts x {sc['runners']} runners x {sc['slots']} slots, "
        f"{sc['launches']} launches: completed {out['completed']}, lost {out['lost']}, "
        f"double-claimed {out['double_claimed']}, 429s {out['http_429']}",
        f"  {out['launches_per_s']} launches/s, launch p50 {out['launch_s']['p50']} s "
        f"p95 {out['launch_s']['p95']} s, hub API p99 {api['p99']} ms, claims per host "
        f"{out['claims_per_host']}",
        f"  {procs}",
        f"  idle runner RSS median {rss.get('median')} MB, max {rss.get('max')} MB "
        f"(target <= 80 MB)",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="launches per side")
    parser.add_argument("--build-runs", type=int, default=3, help="builds per side")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the GitLab double waits before every answer "
                             "(launch_hub)")
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--load-quick", action="store_true")
    scale.add_argument("--load-full", action="store_true")
    scale.add_argument("--no-load", action="store_true")
    parser.add_argument("--spawn-limit", type=int, default=None,
                        help="hub.concurrent_spawn_limit for the load test")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run only these")
    args = parser.parse_args()
    names = [n for n in NAMES if (not args.only or n in args.only)
             and not (n == "load" and args.no_load)]
    started = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    out: dict = {"started": started, "machine": {"node": platform.node(),
                                                 "cpus": os.cpu_count(),
                                                 "load_avg_at_start": os.getloadavg()},
                 "args": vars(args), "rows": [], "failed": {}}
    runners = {"launch_hub": run_launch_hub, "launch_cached": run_launch_cached,
               "build_first": run_build_first, "load": run_load}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started}.json"
    # a SIGTERM unwinds through each benchmark's clean-up; what ran is in the file
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            result = runners[name](args)
        except Exception as e:  # noqa: BLE001 - reported, and the command fails
            traceback.print_exc()
            out["failed"][name] = f"{type(e).__name__}: {e}"[:2000]
            continue
        if name == "load":
            out["load"] = result
        else:
            out["rows"] += [{"benchmark": name, **row} for row in result or []]
        out.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        path.write_text(json.dumps(out, indent=2, default=str) + "\n")  # so far
    out["machine"]["load_avg_at_end"] = os.getloadavg()
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print("\n" + table(out["rows"]))
    if "load" in out:
        print(load_lines(out["load"]))
    for name, why in out["failed"].items():
        print(f"FAILED {name}: {why.splitlines()[0]}")
    print(f"load average {out['machine']['load_avg_at_start']} at start, "
          f"{out['machine']['load_avg_at_end']} at end; written {path}")
    return 1 if out["failed"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
