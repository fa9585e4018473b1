"""The RESULTS.md section of the time-to-target benchmark: per workload, every optimizer's time and
steps to the target, against the baseline's, and the goals met or missed."""

from __future__ import annotations


#: (optimizer, workload, reference, at most this fraction of the reference's time, "and before …")
GOALS = (
    ("thor", "gpt-tiny", "adamw", 0.7, ("muon", "soap")),
    ("thor", "cnn", "sgd", 0.6, ()),
    ("thor-eigen", "gpt-tiny", "adamw", 0.6, ("muon", "soap")),
    ("thor-eigen", "cnn", "thor", 1.0, ()),
    ("shampoo-planned", "gpt-tiny", "shampoo", 1.0, ()),
    ("shampoo-planned", "cnn", "shampoo", 1.0, ()),
    ("soap-planned", "gpt-tiny", "soap", 1.0, ()),
    ("soap-planned", "cnn", "soap", 1.0, ()),
)
METRIC = {"bits_per_byte": "validation bits per byte", "accuracy": "accuracy"}


def _fmt(value, digits: int = 1) -> str:
    return "∞" if value is None else f"{value:.{digits}f}"


def _row(name: str, r: dict, baseline: dict, metric: str) -> str:
    if r.get("status", "ok") != "ok":
        return f"| {name} | {r['status']} | | | | | |"
    ratio = (f"{r['seconds'] / baseline['seconds']:.2f}×" if r.get("seconds") is not None and baseline.get("seconds")
             else "–")
    best = [t["best"] for t in r["trial_records"] if t["best"] is not None]
    pick = min if metric == "bits_per_byte" else max
    return (f"| {name} | {_fmt(r['seconds'])} | {ratio} | {_fmt(r['steps'], 0)} | {r['reached']}/{r['trials']} | "
            f"{pick(best):.4f} | {_fmt(r['ms_per_step'], 0)} |" if best else f"| {name} | ∞ | | | 0/{r['trials']} | | |")


def _corpus(c: dict) -> str:
    keys = ("python", "files", "total_bytes", "train_files", "train_bytes", "validation_files",
            "validation_bytes", "sha256")
    return ", ".join(f"{k} {c[k]}" for k in keys if k in c)


def workload_table(name: str, w: dict) -> list[str]:
    spec = w["spec"]
    if "optimizers" not in w:
        return [f"### {name}: {spec['model']} on {spec['data']}: {w['status']}", ""]
    metric = w["metric"]
    base = spec["baseline"]
    baseline = w["optimizers"].get(base, {})
    lines = [f"### {name}: {spec['model']} on {spec['data']}, batch {spec['batch_size']}, {spec['steps']} steps, "
             f"evaluated every {spec['eval_every']}", "",
             f"Target: {METRIC.get(metric, metric)} {w['target']:.4f} ({'lower' if w['direction'] == 'min' else 'higher'} "
             f"is better; set by {base}: the median of its best trial's best values over "
             f"{len(spec.get('target_set_by', {}).get('values', []))} seeds, "
             + ", ".join(f"{v:.4f}" for v in spec.get("target_set_by", {}).get("values", [])) + ")", "",
             *([f"Text: {_corpus(w['corpus'])}", ""] if w.get("corpus") else []),
             f"| optimizer | seconds to target | × {base} | steps | trials reaching | best of its trials | ms/step |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [_row(o, r, baseline, metric) for o, r in w["optimizers"].items()]
    planned = [f"{o}: " + ", ".join(f"{k}={v}" for k, v in r["planned"].items() if k != "plan")
               for o, r in w["optimizers"].items() if r.get("planned")]
    if planned:
        lines += ["", "Planned peers (`thor-plan profile --for shampoo|soap` on this workload): " + "; ".join(planned)]
    return lines + [""]


def _first_reaching(curve: list, value: float, lower: bool) -> float | None:
    """Seconds at the first evaluation of ``curve`` (``[step, seconds, value]``) at least as good as ``value``."""
    return next((sec for _, sec, v in curve if (v <= value if lower else v >= value)), None)


def _to_reference_best(w: dict, opt: str, ref: str) -> str:
    """When ``ref`` missed the target: its best value over every trial, when it first got there, and
    how soon ``opt``'s trials got there (from the stored curves)."""
    lower = str(w.get("direction", "min")).startswith("min")
    refs = [r for r in w["optimizers"][ref].get("trial_records", []) if r.get("curve")]
    mine = [r for r in w["optimizers"][opt].get("trial_records", []) if r.get("curve")]
    if not refs or not mine:
        return ""
    pick = min if lower else max
    best = pick(v for r in refs for _, _, v in r["curve"])
    theirs = min(t for r in refs if (t := _first_reaching(r["curve"], best, lower)) is not None)
    times = [t for r in mine if (t := _first_reaching(r["curve"], best, lower)) is not None]
    if not times:
        return f"; {ref}'s best, {best:.4g} at {theirs:.1f} s, {opt} did not reach"
    return (f"; {ref}'s best value, {best:.4g}, first at {theirs:.1f} s: {opt} reached it at {min(times):.1f} s "
            f"({min(times) / theirs:.2f}×)")


def goal_lines(workloads: dict) -> list[str]:
    out = []
    for opt, name, ref, fraction, before in GOALS:
        w = workloads.get(name)
        if w is not None and "optimizers" not in w:
            out.append(f"- **not measured**: {opt} on {name} ≤ {fraction}× {ref}'s time (the workload was not run)")
            continue
        if w is None or opt not in w["optimizers"] or ref not in w["optimizers"]:
            continue
        mine, theirs = w["optimizers"][opt].get("seconds"), w["optimizers"][ref].get("seconds")
        run = [p for p in before if p in w["optimizers"]]
        ahead = [p for p in run if w["optimizers"][p].get("seconds") is None or
                 (mine is not None and mine < w["optimizers"][p]["seconds"])]
        extra = (f"; before {', '.join(before)}: " + ("not run" if not run else "yes" if len(ahead) == len(before)
                                                       else "no" if len(run) == len(before) else
                                                       f"{', '.join(p for p in before if p not in run)} not run")
                 if before else "")
        if theirs is None and mine is not None:
            out.append(f"- **not judged**: {opt} on {name} ≤ {fraction}× {ref}'s time{extra} ({ref} did not reach "
                       f"the target; {opt} did in {mine:.1f} s){_to_reference_best(w, opt, ref)}")
            continue
        ratio = None if mine is None or theirs is None else mine / theirs
        met = ratio is not None and ratio <= fraction and len(ahead) == len(before)
        shown = "∞ (not reached)" if ratio is None else f"{ratio:.2f}×"
        out.append(f"- **{'met' if met else 'missed'}**: {opt} on {name} ≤ {fraction}× {ref}'s time{extra} "
                   f"(measured {shown})")
    return out


def section(data: dict, name: str) -> str:
    named = "" if name in ("time_to_target", "time_to_target_gpu") else f", results `{name}`"
    lines = [f"## Time to target against today's optimizers (`bench/time_to_target.py`{named})", "",
             f"Machine: {data['machine']}. Command: `{data['command']}`. The stored trials trained for "
             f"{data.get('trial_seconds', 0) / 3600:.2f} h in all (sum of the trials' durations, evaluations "
             "included; the baseline's target re-runs not counted).", "",
             "Each optimizer tuned with the same number of quasi-random trials in its own search space (one "
             "study); score = training seconds to the target of the fastest trial (evaluation excluded), ∞ when "
             "none reached it. Figures: `bench/results/" + name + ".html` (generated, not committed: `python "
             "bench/time_to_target_page.py` writes it from the JSON); every trial: `bench/results/" + name
             + ".json`.", ""]
    for rerun in data.get("reruns", []):
        rows = ", ".join(rerun["rows"])
        lines += [f"Re-run since, the other rows kept: {rows} (`{rerun['command']}`; {rerun['machine']}).", ""]
    for wname, w in data["workloads"].items():
        lines += workload_table(wname, w)
    score = data.get("benchmark_score") or {}
    if score:
        lines += ["AlgoPerf benchmark score (area under the performance profile, log τ): " +
                  ", ".join(f"{k} {v:.2f}" for k, v in sorted(score.items(), key=lambda kv: -kv[1])), ""]
    goals = goal_lines(data["workloads"])
    if goals:
        lines += ["Goals:", *goals]
    return "\n".join(lines)
