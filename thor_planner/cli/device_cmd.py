"""``thor-plan device-profile``: measure this device's inversion costs once, plan any model offline."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.markup import escape

from thor_planner.utils.atomic import check_file_target
from thor_planner.utils.errors import UserError

from .console import RUNS, BarProgress, console, path_value, print_table, user_errors


def _int_list(text: str | None, option: str, example: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"Invalid {option}={text!r}: give comma-separated integers, e.g. {example}") from None
    if not values or any(v < 1 for v in values) or values != sorted(set(values)):
        raise UserError(f"Invalid {option}={text!r}: give increasing integers >= 1, e.g. {example}")
    return values


def device_profile_cmd(
    out: Path = typer.Option(None, "--out", "-o", parser=path_value, metavar="FILE", help="Profile file to write (default: runs/devices/<device>.json, which git ignores)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    sizes: str = typer.Option(None, "--sizes", help="Block sizes (default: 1 and powers of two from 16 to 2048 on CPU, 4096 on CUDA)."),
    backends: str = typer.Option(None, "--backends", help="Comma-separated backends (default: all that suit the device)."),
    counts: str = typer.Option(None, "--counts", help="Batch counts per block size (default 1,4,16,64,256,1024,4096, within the budget)."),
    cell_budget: float = typer.Option(1.0, "--cell-budget", help="Seconds of measuring per backend and block size."),
) -> None:
    """Measure the inversion backends on this device and write a device profile for offline planning.

    Every backend that suits the device is accuracy-checked, then timed over block sizes and batch
    counts; 'thor-plan profile --device-profile FILE' predicts a model's timings from the file.
    """
    from thor_planner.timing.device_profile import DEFAULT_COUNTS, device_slug, measure_device_profile
    from thor_planner.inversion.backends import BACKENDS
    from thor_planner.timing.device import DEVICES, device_info, resolve_device

    with user_errors("lower --sizes or --counts"):
        if device not in DEVICES:
            raise UserError(f"Invalid --device={device!r}: use auto, cpu or cuda")
        if not 0 < cell_budget < math.inf:
            raise UserError(f"Invalid --cell-budget={cell_budget:g}: must be > 0 seconds")
        size_list = _int_list(sizes, "--sizes", "1,16,64,256")
        count_list = _int_list(counts, "--counts", "1,4,16,64") or list(DEFAULT_COUNTS)
        names = [n.strip() for n in backends.split(",") if n.strip()] if backends is not None else None
        unknown = [n for n in names or [] if n not in BACKENDS]
        if names is not None and (unknown or not names):
            raise UserError(f"Invalid --backends={backends!r}: unknown {', '.join(unknown) or '(none given)'}; "
                            f"available here: {', '.join(BACKENDS)}")
        dev = resolve_device(device)
        from thor_planner.inversion.extra import CUDA_ONLY

        cuda_only = [n for n in names or [] if n in CUDA_ONLY]
        if cuda_only and dev.type != "cuda":
            raise UserError(f"Invalid --backends={backends!r}: {', '.join(cuda_only)} runs on CUDA only; on "
                            f"{dev.type} use {', '.join(n for n in BACKENDS if n not in CUDA_ONLY)}")
        info = {k: v for k, v in device_info(dev, "auto").items() if k != "backend"}
        path = out or RUNS / "devices" / f"{device_slug(info)}.json"
        check_file_target(path, "--out", f"{device_slug(info)}.json", make_parents=True)  # before a minute of measuring
        bars = BarProgress()
        from thor_planner.timing.device_profile import default_sizes

        with bars.stage("device profile", len(size_list or default_sizes(dev.type))) as advance:
            profile = measure_device_profile(dev, sizes=size_list, backends=names, counts=count_list,
                                             cell_budget_s=cell_budget, device_info=info, progress=advance)
        try:
            profile.save(path)
        except OSError as exc:
            raise UserError(f"Cannot write --out '{path}' ({exc.strerror or exc}): choose another --out") from None
    model = profile.cost_model()
    rows = []
    for size in profile.sizes:
        measured = [n for n, cells in profile.backends.items() if size in cells]
        if measured:
            best, seconds = model.best(size, 64, measured)
            rows.append([str(size), best, f"{seconds / 64 * 1e6:.1f}", str(len(measured))])
    print_table(console, ["block size", "fastest at 64 blocks", "µs / block", "backends measured"], rows, right=2)
    for entry in profile.excluded:
        console.print(escape(f"excluded {entry['backend']} at size {entry['size']}: {entry['reason']}"))
    console.print(escape(f"Measured {info['name']} ({dev.type}) in {profile.wall_seconds:.1f} s; wrote {path}"))
