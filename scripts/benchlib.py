"""Side-by-side timing for the scripts/bench* benchmarks, done honestly:

- the two sides alternate within each repetition (A B, then B A, ...), after one untimed
  warm-up run of each, so drift of the machine (page cache, thermal, other load) hits both;
- every run's exit status is checked and its output verified by the side's own check: a failed
  or wrong run is an error that stops the benchmark, never a fast time;
- each side reports the median wall time with its spread (min-max), the median CPU seconds
  (user + system, the process tree's), and the peak anonymous RSS of the process tree, sampled
  every 5 ms from /proc (RssAnon: the memory a run needs of its own, not the page cache).
"""

import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


class BenchFailed(Exception):
    pass


@dataclass
class Side:
    """One side of a comparison: a shell command, what to do before each run (untimed), and a
    check of the run's result (raises BenchFailed when the work was not done right)."""

    name: str
    command: str
    setup: callable = None
    check: callable = None


@dataclass
class Run:
    wall: float
    cpu: float
    anon_peak_kib: int
    stdout: str
    stderr: str


@dataclass
class Stats:
    name: str
    runs: list = field(default_factory=list)

    @property
    def wall(self):
        return statistics.median(r.wall for r in self.runs)

    @property
    def spread(self):
        walls = [r.wall for r in self.runs]
        return min(walls), max(walls)

    @property
    def cpu(self):
        return statistics.median(r.cpu for r in self.runs)

    @property
    def anon_peak_kib(self):
        return max(r.anon_peak_kib for r in self.runs)


def _tree(pid):
    """pid and its descendants, from /proc/PID/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def _anon_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(command, env=None):
    """Runs a shell command; returns its Run. Raises BenchFailed on a non-zero exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", "-c", command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], sum(_anon_kib(p) for p in _tree(proc.pid)))
            done.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise BenchFailed(f"`{command}` exited {proc.returncode}:\n{err[-3000:]}")
    return Run(wall, cpu, peak[0], out, err)


def compare(label, a, b, repetitions=3, log=None):
    """Times sides a and b alternately; returns (Stats a, Stats b)."""
    stats = {a.name: Stats(a.name), b.name: Stats(b.name)}
    for rep in range(repetitions + 1):
        order = (a, b) if rep % 2 == 0 else (b, a)
        for side in order:
            if side.setup:
                side.setup()
            run = measure(side.command)
            if side.check:
                side.check(run)
            if rep > 0:  # the first round warms up
                stats[side.name].runs.append(run)
            if log:
                log(f"{label}: {side.name} {'warm-up' if rep == 0 else f'run {rep}'}"
                    f" {run.wall:.3f} s")
    return stats[a.name], stats[b.name]


def side_rows(label, *sides):
    """Table rows for a comparison: median wall, spread, CPU, peak anonymous RSS per side."""
    rows = []
    for s in sides:
        low, high = s.spread
        rows.append(f"  {s.name:<44} {s.wall:8.3f} s  ({low:.3f}-{high:.3f})"
                    f" {s.cpu:8.2f} s CPU {s.anon_peak_kib / 1024:8.1f} MiB")
    return [label] + rows


HEADER = (f"  {'side':<44} {'median':>10}  {'(min-max)':<13} {'CPU':>12}"
          f" {'peak anon RSS':>14}")


def say(message):
    print(f"==> {message}", file=sys.stderr, flush=True)
