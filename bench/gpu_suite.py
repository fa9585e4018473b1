"""The GPU evidence in one run: the CUDA tests, the training-step benchmark, the profile's speed and
reproducibility, the device profile against measurement and gpt-small on the standard library,
each stage under its own time limit, everything written under one folder and packed.

    python bench/gpu_suite.py --pack DIR            # on a CUDA machine (bench/gpu_suite.sh does this)
    python bench/gpu_suite.py --rehearse            # the same stages at tiny sizes on a CPU
    python bench/gpu_suite.py --collect FILE.tar.gz # put a GPU run's results into the repository

Stages, in order (seconds: the limit on CUDA / rehearsing; each limit is also cut to what is left of
``--budget``, and a stage with less than 10 s left is skipped):

- ``setup`` (20 / 20): installs the carried wheels (``.whl/*.whl``, ``.peers/*.whl``) and Distributed
  Shampoo's source (``.peers/distributed_shampoo-*.tar.gz``) into a fresh folder on ``PYTHONPATH``
  with ``pip --no-index``; rehearsing, it only checks that the wheels install for Python 3.12
  (``--dry-run``) and installs the peers.
- ``tests`` (45 / 30): ``pytest -m gpu`` (every CUDA test, the sync-free step's included; they skip
  without CUDA).
- ``step`` (125 / 30): ``bench/gpu_step.py --window 10``: ResNet-50, batch 256, 224², fp32 and bf16
  + channels_last; SGD, THOR at kfac-pytorch's cadence and late, THOR-128, dense, the breakdown,
  kfac-pytorch, Distributed Shampoo, peak memory.
- ``profile`` (65 / 30): ``bench/profile_speed.py --warm 4 --reproducibility``: ``thor-plan profile
  --model resnet50`` cold and 4 warm, the split of the 5 runs and their crossover intervals.
- ``device`` (50 / 25): ``thor-plan device-profile --cell-budget 0.2``, kept as
  ``profiles/devices/<device>.json``, then ``bench/device_predict.py``: its prediction of
  ResNet-50's whole-network refresh against the refresh measured.
- ``gpt`` (55 / 25): ``bench/gpt_step.py``: gpt-small on the standard library in bf16, step times of
  AdamW, Muon, SOAP, THOR and the eigen family (planned from the device stage's profile), then a
  time-to-target run in the time left.

Layout of the output folder (``--out``, default ``runs/gpu-suite/gpu-<time>``): ``summary.txt``
(one line per stage), ``summary.json``, ``logs/<stage>.log``, and ``repo/``, the
repository's own paths: ``repo/bench/RESULTS.md`` (the sections written), ``repo/bench/results/*.json``
(each named with the device), ``repo/profiles/devices/<device>.json``. ``--pack DIR`` writes
``DIR/gpu-suite.tar.gz`` (the whole folder) and ``DIR/summary.txt``. Nothing in the repository is
written during the run; ``--collect`` copies a packed GPU run's ``repo/`` files into the repository
(JSON and device profile files as they are, RESULTS.md section by section) and refuses a rehearsal.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(tempfile.gettempdir()) / "thor-gpu-suite-site"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
MIN_STAGE_S = 10


@dataclass
class Stage:
    name: str
    cap: float  # seconds on CUDA
    rehearse_cap: float
    what: str


STAGES = [
    Stage("setup", 20, 20, "carried wheels and peers installed"),
    Stage("tests", 45, 30, "pytest -m gpu"),
    Stage("step", 125, 30, "bench/gpu_step.py: ResNet-50 step cost"),
    Stage("profile", 65, 30, "thor-plan profile cold + warm, 5 identical runs"),
    Stage("device", 50, 25, "thor-plan device-profile and its prediction error"),
    Stage("gpt", 55, 25, "gpt-small on the standard library, bf16"),
]


@dataclass
class Suite:
    out: Path
    rehearse: bool
    budget: float
    python: str = sys.executable
    start: float = field(default_factory=time.perf_counter)
    records: list[dict] = field(default_factory=list)

    @property
    def bench_out(self) -> Path:
        return self.out / "repo" / "bench"

    def env(self) -> dict:
        path = [str(ROOT), str(SITE)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONUNBUFFERED": "1",
               "THOR_BENCH_OUT": str(self.bench_out), "THOR_PLAN_CACHE_DIR": str(self.out / "cache"),
               "PYTHONWARNINGS": "ignore"}
        if self.rehearse:
            env.update({"THOR_BENCH_REHEARSAL": "1", "OMP_NUM_THREADS": "1"})
        return env

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def cap(self, stage: Stage) -> float:
        """The stage's limit: its own, cut to what is left of the budget."""
        return min(stage.rehearse_cap if self.rehearse else stage.cap, self.left())

    def run(self, stage: Stage, commands: list[list[str]]) -> dict:
        """The stage's commands in turn under one limit (GNU ``timeout``, the child's process group
        included); output to ``logs/<stage>.log``."""
        cap = self.cap(stage)
        record = {"stage": stage.name, "what": stage.what, "cap_s": round(cap, 1)}
        if cap < MIN_STAGE_S:
            return {**record, "status": "skipped", "seconds": 0.0, "rc": None}
        log = self.out / "logs" / f"{stage.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start, rc = time.perf_counter(), 0
        with log.open("w") as fh:
            for cmd in commands:
                remaining = cap - (time.perf_counter() - start)
                fh.write(f"$ {' '.join(cmd)}\n")
                fh.flush()
                rc = subprocess.run(["timeout", "-k", "5", f"{max(remaining, 1):.0f}", *cmd], cwd=ROOT,
                                    env=self.env(), stdout=fh, stderr=subprocess.STDOUT).returncode
                if rc:
                    break
        status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else f"failed (exit {rc})")
        return {**record, "status": status, "rc": rc, "seconds": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------------- commands


def setup_commands(suite: Suite) -> list[list[str]]:
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.mkdir(parents=True)
    wheels = sorted(glob.glob(str(ROOT / ".whl" / "*.whl")))
    peers = sorted(glob.glob(str(ROOT / ".peers" / "*.whl")))
    pip = [suite.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check"]
    cmds = []
    if wheels and suite.rehearse:  # built for the GPU machine's Python: check they install there
        plats = [a for p in PLATFORMS for a in ("--platform", p)]
        cmds.append(pip + ["--dry-run", "--only-binary=:all:", "--python-version", "3.12",
                           "--implementation", "cp", *plats, "--target", str(SITE / "dry"), *wheels])
    install = (peers if suite.rehearse else wheels + peers)
    if install:
        cmds.append(pip + ["--upgrade", "--target", str(SITE), *install])
    for source in sorted(glob.glob(str(ROOT / ".peers" / "distributed_shampoo-*.tar.gz"))):
        cmds.append(["tar", "-xzf", source, "-C", str(SITE)])
    probe = ("import importlib, json\nout = {}\nfor m in ('plotly', 'optuna', 'heavyball', 'kfac', "
             "'distributed_shampoo', 'torchvision', 'cupy'):\n    try:\n"
             "        mod = importlib.import_module(m)\n"
             "        out[m] = getattr(mod, '__version__', 'present')\n"
             "    except Exception as exc:\n        out[m] = 'absent: ' + type(exc).__name__\n"
             "print('IMPORTS ' + json.dumps(out))")
    return cmds + [[suite.python, "-W", "ignore", "-c", probe]]


def stage_commands(suite: Suite, name: str) -> list[list[str]]:
    py, r = suite.python, suite.rehearse
    if name == "setup":
        return setup_commands(suite)
    if name == "tests":
        return [[py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                 "--continue-on-collection-errors", "--junitxml", str(suite.out / "logs" / "tests.xml"),
                 "tests"]]
    if name == "step":
        return [[py, "bench/gpu_step.py"] + (["--rehearse"] if r else ["--window", "10"])]
    if name == "profile":
        return [[py, "bench/profile_speed.py", "--model", "cnn" if r else "resnet50",
                 "--warm", "2" if r else "4", "--no-loss-speedup", "--reproducibility"]]
    if name == "device":
        raw = str(suite.out / "device-profile.json")
        profile = [py, "-m", "thor_planner.cli", "device-profile", "--out", raw]
        profile += ["--sizes", "1,16,32,64,128", "--counts", "1,4,16", "--cell-budget", "0.05"] if r else \
            ["--cell-budget", "0.2"]
        predict = [py, "bench/device_predict.py", "--profile", raw] + (
            ["--model", "cnn", "--budget", "0.05"] if r else ["--budget", "0.3"])
        return [profile, predict]
    if name == "gpt":
        cap = suite.cap(next(s for s in STAGES if s.name == "gpt"))
        profile = suite.out / "device-profile.json"  # the device stage's: no timing needed to plan
        seconds = f"{max(cap - (5 if r else 8), 5):.0f}"  # the rest: the process's start and end
        return [[py, "bench/gpt_step.py", "--seconds", seconds] + (["--rehearse"] if r else [])
                + (["--device-profile", str(profile)] if profile.exists() else [])]
    raise ValueError(name)


# ---------------------------------------------------------------------------------- summaries


def _load(suite: Suite, pattern: str) -> dict | None:
    found = sorted((suite.bench_out / "results").glob(pattern))
    return json.loads(found[-1].read_text()) if found else None


def summarize(suite: Suite, name: str) -> str:
    """One line of what the stage measured (from its log or its JSON)."""
    try:
        return SUMMARIES[name](suite)
    except Exception as exc:  # noqa: BLE001 - a partial run summarises what it has
        return f"(no summary: {type(exc).__name__}: {exc})"


def summary_setup(suite: Suite) -> str:
    text = (suite.out / "logs" / "setup.log").read_text()
    found = re.search(r"^IMPORTS (.*)$", text, re.M)
    imports = json.loads(found.group(1)) if found else {}
    wheels = len(glob.glob(str(ROOT / ".whl" / "*.whl"))) + len(glob.glob(str(ROOT / ".peers" / "*")))
    return f"{wheels} carried files; " + ", ".join(f"{k} {v}" for k, v in imports.items())


def summary_tests(suite: Suite) -> str:
    lines = [line for line in (suite.out / "logs" / "tests.log").read_text().splitlines() if line.strip()]
    counts = [line for line in lines if re.search(r"\d+ (passed|failed|skipped|error|deselected)", line)]
    failed = [line.split(" ")[1] for line in lines if line.startswith(("FAILED", "ERROR"))]
    failing = f"; failing: {', '.join(failed[:6])}" if failed else ""
    return (counts[-1].strip("= ") if counts else lines[-1]) + failing


def summary_step(suite: Suite) -> str:
    data = _load(suite, "gpu_step-*.json")
    parts = []
    for case, entry in data["cases"].items():
        rows = entry["rows"]

        def ratio(key: str) -> str:
            row = rows.get(key)
            return f"{row['vs_sgd']:.2f}×" if isinstance(row, dict) else str(row or "-").split(":")[0]
        peak = rows["thor"].get("peak_vs_sgd") if isinstance(rows.get("thor"), dict) else None
        parts.append(f"{case.split(', ')[-1]}: SGD {rows['sgd']['ms']:.1f} ms, thor {ratio('thor')}, late "
                     f"{ratio('thor_late')}, kfac {ratio('kfac_pytorch')}, "
                     f"shampoo {ratio('distributed_shampoo')}" + (f", peak {peak:.2f}×" if peak else ""))
    return "; ".join(parts) or "no case finished"


def summary_profile(suite: Suite) -> str:
    data = _load(suite, "profile_speed-*.json")
    runs = [data["cold"]] + data["warm"]
    repro = _load(suite, "reproducibility-*.json")
    goal = repro["goal"] if repro else "no reproducibility report"
    intervals = [[round(v) for v in r["interval"]] if r["interval"] else None for r in runs]
    return (f"cold {data['cold']['total_seconds']:.1f} s, warm {data['total_seconds']:.1f} s (typical); "
            f"splits {[r['split'] for r in runs]}; intervals {intervals}; {goal}")


def summary_device(suite: Suite) -> str:
    data = _load(suite, "device_predict-*.json")
    return (f"profile {data['profile_wall_seconds']:.0f} s -> profiles/devices/{data['profile']}; prediction "
            f"error median {data['median_abs_error'] * 100:.1f}%, largest {data['max_abs_error'] * 100:.1f}% "
            f"({data['goal']})")


def summary_gpt(suite: Suite) -> str:
    data = _load(suite, "gpt_step-*.json")

    def step(name: str, row: dict) -> str:
        why = row.get("absent") or row.get("failed") or "?"
        return f"{name} {row['ms']:.1f} ms" if "ms" in row else f"{name} {why[:40]}"

    steps = ", ".join(step(n, r) for n, r in data["steps"].items())
    ttt, tail = data.get("time_to_target"), ""
    if ttt:
        reached = ", ".join(f"{n} {s if s is None else round(s, 1)} s" for n, s in ttt["seconds"].items())
        tail = f"; to {ttt['target']} bits/byte: {reached}"
    return f"{data['model']} plan split {data['plan']['split']}; {steps}{tail}"


SUMMARIES = {"setup": summary_setup, "tests": summary_tests, "step": summary_step, "profile": summary_profile,
             "device": summary_device, "gpt": summary_gpt}


# ------------------------------------------------------------------------------------ the run


def header(suite: Suite) -> list[str]:
    code = ("import torch, platform; print(torch.__version__, torch.version.cuda, "
            "torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA', "
            "platform.python_version())")
    probe = subprocess.run([suite.python, "-c", code], capture_output=True, text=True, cwd=ROOT)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return [f"thor-plan GPU suite{' REHEARSAL (CPU, tiny sizes: not results)' if suite.rehearse else ''}",
            f"device/torch/cuda/python: {probe.stdout.strip() or probe.stderr.strip()[-200:]}",
            f"commit {commit.stdout.strip() or 'unknown'}; budget {suite.budget:.0f} s; output {suite.out}"]


def run_suite(suite: Suite, only: list[str] | None) -> list[str]:
    lines = header(suite)
    for line in lines:
        print(line, flush=True)
    for stage in STAGES:
        if only and stage.name not in only:
            continue
        record = suite.run(stage, stage_commands(suite, stage.name))
        record["summary"] = summarize(suite, stage.name) if record["status"] != "skipped" else ""
        suite.records.append(record)
        line = (f"[{stage.name}] {record['status']} in {record['seconds']:.0f} s "
                f"(cap {record['cap_s']:.0f} s): {record['summary']}")
        lines.append(line)
        print(line, flush=True)
        write_summary(suite, lines)
    total = f"total {time.perf_counter() - suite.start:.0f} s of a {suite.budget:.0f} s budget"
    lines.append(total)
    print(total, flush=True)
    write_summary(suite, lines)
    return lines


def write_summary(suite: Suite, lines: list[str]) -> None:
    (suite.out / "summary.txt").write_text("\n".join(lines) + "\n")
    (suite.out / "summary.json").write_text(json.dumps({
        "rehearsal": suite.rehearse, "budget_s": suite.budget, "python": platform.python_version(),
        "stages": suite.records}, indent=1) + "\n")


def pack(suite: Suite, dest: Path) -> None:
    """``dest/gpu-suite.tar.gz`` (the output folder, caches left out) and ``dest/summary.txt``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / "gpu-suite.tar.gz", "w:gz") as tar:
        tar.add(suite.out, arcname="gpu-suite", filter=lambda t: None if "/cache" in t.name else t)
    shutil.copyfile(suite.out / "summary.txt", dest / "summary.txt")


# ---------------------------------------------------------------------------------- collecting


def merge_sections(source: Path, target: Path) -> list[str]:
    """Copy every ``<!-- name -->`` section of ``source`` into ``target`` (replacing one of the same
    name, else appending); returns the section names."""
    pattern = re.compile(r"<!-- ([\w.-]+) -->\n.*?<!-- /\1 -->", re.S)
    text = target.read_text()
    names = []
    for match in pattern.finditer(source.read_text()):
        name, block = match.group(1), match.group(0)
        names.append(name)
        own = re.compile(re.escape(f"<!-- {name} -->") + ".*?" + re.escape(f"<!-- /{name} -->"), re.S)
        text = own.sub(lambda _: block, text) if own.search(text) else text.rstrip() + "\n\n" + block + "\n"
    target.write_text(text)
    return names


def collect(archive: Path) -> None:
    """Put a packed GPU run's results into the repository (see the module docstring)."""
    dest = ROOT / "runs" / "gpu-suite" / f"collected-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    folder = dest / "gpu-suite"
    summary = json.loads((folder / "summary.json").read_text())
    if summary.get("rehearsal"):
        sys.exit(f"{archive} is a rehearsal (CPU, tiny sizes): not collected")
    repo = folder / "repo"
    copied = []
    for path in sorted(repo.rglob("*.json")):
        target = ROOT / path.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(str(target.relative_to(ROOT)))
    sections = merge_sections(repo / "bench" / "RESULTS.md", ROOT / "bench" / "RESULTS.md") \
        if (repo / "bench" / "RESULTS.md").exists() else []
    print(f"Unpacked to {dest}\nCopied: {', '.join(copied) or 'nothing'}\nSections of bench/RESULTS.md: "
          f"{', '.join(sections) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true",
                        help="tiny sizes on the CPU (results marked rehearsal)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/gpu-suite/gpu-<time> or rehearsal-<time>)")
    parser.add_argument("--pack", type=Path, default=None, help="write gpu-suite.tar.gz and summary.txt here")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for all stages (default 360; rehearsing 110)")
    parser.add_argument("--only", default=None, help="comma-separated stages to run (default all)")
    parser.add_argument("--collect", type=Path, default=None,
                        help="a packed GPU run (gpu-suite.tar.gz) to put into the repository")
    args = parser.parse_args()
    if args.collect is not None:
        collect(args.collect)
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "runs" / "gpu-suite" / f"{'rehearsal' if args.rehearse else 'gpu'}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (110 if args.rehearse else 360)
    suite = Suite(out=out.resolve(), rehearse=args.rehearse, budget=budget)
    run_suite(suite, args.only.split(",") if args.only else None)
    if args.pack is not None:
        pack(suite, args.pack)


if __name__ == "__main__":
    main()
