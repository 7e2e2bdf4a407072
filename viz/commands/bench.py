"""``landscape bench KIND``: benchmarks against peers in the same run (prints ratios)."""
from __future__ import annotations

import argparse
import functools
import importlib
import math

from landscape.benchmarks import KINDS
from viz.cli import add_common

# bounds of the options benchmarks share, checked before a benchmark starts (each declares its own options)
POSITIVE_INTS = ("samples", "grid", "repeat", "rounds", "dense_max", "points_per_batch", "batch_size")
POSITIVE_FLOATS = ("range", "tol")


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks against peers (surface, hessian, data, sharpness)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="examples:\n  landscape bench surface --grid 51\n"
                              "  landscape bench surface --arch resnet20 --samples 256 --grid 5 --repeat 2\n"
                              "  landscape bench hessian --arch resnet20 --threads 1\n  landscape bench data")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")
    for kind in KINDS:
        module = importlib.import_module(f"landscape.benchmarks.{kind}")
        q = kinds.add_parser(kind, help=(module.__doc__ or kind).strip().splitlines()[0], description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        if kind in ARGUMENTS:  # the benchmark returns numbers; this command parses options and prints them
            ARGUMENTS[kind](q)
            add_common(q)
            q.set_defaults(func=functools.partial(_checked, RUNNERS[kind]))
        else:
            module.add_arguments(q)
            add_common(q)
            q.set_defaults(func=functools.partial(_checked, _runner(kind, module)))
    p.set_defaults(func=lambda args: p.print_help())


def _runner(kind: str, module):
    """``args -> exit code``: a benchmark that returns its results is printed here (and written with --json)."""
    def run(args) -> int:
        result = module.run(args)
        if not hasattr(result, "to_dict"):
            return int(result or 0)
        print(PRINTERS[kind](result))
        if getattr(args, "json", None):
            from landscape.io import write_json

            write_json(args.json, result.to_dict())
        return 0

    return run


# -- bench hessian -------------------------------------------------------------------------------
def hessian_arguments(q: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench hessian`` (see :func:`landscape.benchmarks.hessian.run`)."""
    from landscape.benchmarks.hessian import SECTIONS

    q.add_argument("--arch", default="resnet20",
                   help="registered architecture, freshly initialised for 32x32x3 inputs (default: resnet20, or its "
                        "stand-in until the zoo has it)")
    q.add_argument("--checkpoint", default=None, help="measure this checkpoint instead of --arch")
    q.add_argument("--data", default=None, help="'synthetic' (seeded images, the default for --arch) or a dataset spec "
                   "(default for --checkpoint: the data set its meta names, when that needs no file)")
    q.add_argument("--samples", type=int, default=256, help="samples of the objective (default: 256)")
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadier on a shared machine)")
    q.add_argument("--rounds", type=int, default=3, help="interleaved rounds of single-product timings (default: 3)")
    q.add_argument("--grid", type=int, default=2, help="points per axis of the ratio map (default: 2)")
    q.add_argument("--range", type=float, default=1.0, help="the map spans [-R, R]^2 (default: 1)")
    q.add_argument("--tol", type=float, default=1e-3, help="the toolkit's Lanczos tolerance (default: 1e-3)")
    q.add_argument("--probes", type=int, default=4, help="Hutchinson probes of the trace section (default: 4)")
    q.add_argument("--probe-batch", type=int, default=4, help="vectors per graph in the batched row (default: 4)")
    q.add_argument("--blocks", type=int, default=3, help="layers of the per-layer section (default: 3)")
    q.add_argument("--li-batch", type=int, default=128, help="DataLoader batch of Li et al.'s product (default: 128)")
    q.add_argument("--dense-max", type=int, default=5000,
                   help="largest Hessian formed densely as the map's truth (default: 5000 rows)")
    q.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    q.add_argument("--no-peer", action="store_true", help="skip pyhessian and Li et al.'s recipe")
    q.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def run_hessian(args) -> int:
    from landscape.benchmarks.hessian import run
    from landscape.errors import check_scalar

    for name in ("samples", "rounds", "grid", "probes", "probe_batch", "blocks", "li_batch", "dense_max"):
        check_scalar(getattr(args, name), f"--{name.replace('_', '-')}", int, min=1)
    result = run(checkpoint=args.checkpoint, arch=args.arch, data=args.data, samples=args.samples, seed=args.seed,
                 device=args.device, threads=args.threads, rounds=args.rounds, grid=args.grid, range_=args.range,
                 tol=args.tol, probes=args.probes, probe_batch=args.probe_batch, blocks=args.blocks,
                 li_batch=args.li_batch, dense_max=args.dense_max, peers=not args.no_peer,
                 sections=[s.strip() for s in args.only.split(",") if s.strip()], trust_code=args.trust_code)
    print(format_hessian(result))
    if args.json:
        from landscape.io import write_json

        write_json(args.json, result)
    return 0


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or not b else f"{a / b:.2f}x"


def _num(x, fmt: str = ".3g") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_hessian(result: dict) -> str:
    """The tables of ``landscape bench hessian`` from :func:`landscape.benchmarks.hessian.run`'s result."""
    s = result["setup"]
    lines = [f"hessian benchmark: {s['model']}, {s['parameters']:,} parameters; {s['data']}",
             f"device {s['device']}, {s['threads']} threads, torch {s['torch']}; single products: best of "
             f"{s['rounds']} interleaved rounds (median in brackets)"]
    if "products" in result:
        p = result["products"]
        fwd, grad, ph, ph1 = p["forward"], p["gradient"], p["pyhessian"], p["pyhessian_first"]
        lines += ["", f"products (batchnorm folded: {p['folded']})",
                  f"{'method':58s} {'s/HVP':>9s} {'(median)':>9s} {'HVP/s':>7s} {'x forward':>10s} "
                  f"{'x gradient':>11s} {'x pyhessian':>12s}"]
        for r in p["rows"]:
            per = r["seconds"]
            ref = ph1 if r["method"].startswith(("landscape: first", "pyhessian: first")) else ph
            rate = f"{1 / per:7.2f}" if r["vectors"] else " " * 7
            lines.append(f"{r['method']:58s} {per:9.4f} {r['median']:9.4f} {rate} {_ratio(per, fwd):>10s} "
                         f"{_ratio(per, grad):>11s} {(_ratio(per, ref) if r['vectors'] else ''):>12s}")
        lines.append("(first-product rows are compared with pyhessian's first product, the others with its cached "
                     f"one; linearize traced for {p['linearize_setup']:.1f} s before its first product)")
        lines.append(f"(a gradient costs {_ratio(grad, fwd)} a forward pass here; an exact product differentiates a "
                     f"gradient, so about two gradients, {_ratio(2 * grad, fwd)} a forward pass, is its floor)")
    if "extremes" in result:
        lines += ["", "extremes at the centre (residual ||Hu - theta u|| / |lambda_max| from extra untimed products)",
                  f"{'method':42s} {'seconds':>9s} {'HVPs':>5s} {'lambda_min':>11s} {'lambda_max':>11s} "
                  f"{'|ratio|':>8s} {'res min':>8s} {'res max':>8s} {'x Li':>7s}"]
        rows = result["extremes"]["rows"]
        li = next((r["seconds"] for r in rows if r["method"].startswith("Li et al.")), None)
        for r in rows:
            lines.append(f"{r['method']:42s} {r['seconds']:9.2f} {r['hvps']:5d} {_num(r['lam_min'], '.5g'):>11s} "
                         f"{_num(r['lam_max'], '.5g'):>11s} {_num(r['ratio'], '.4f'):>8s} "
                         f"{_num(r['res_min'], '.1e'):>8s} {_num(r['res_max'], '.1e'):>8s} "
                         f"{_ratio(r['seconds'], li):>7s}")
    if "map" in result:
        m = result["map"]
        span = f"[-{m['range']:g}, {m['range']:g}]^2"
        truth = f"errors against the {m['truth']}" if m["truth"] else "no dense truth at this size: see the residuals"
        lines += ["", f"eigenvalue-ratio map: {m['grid']} x {m['grid']} points over {span}; {truth}",
                  f"{'method':<12} {'HVPs/point':>10} {'s/point':>9} {'max ratio err':>14} {'max lam_max rel err':>20} "
                  f"{'max residual':>13} {'x Li':>7}"]
        li = m["rows"].get("li-eigsh", {}).get("seconds")
        for name, r in m["rows"].items():
            lines.append(f"{name:<12} {r['hvps'] / m['points']:>10.1f} {r['seconds'] / m['points']:>9.3f} "
                         f"{_num(r['max_ratio_error'], '.2e'):>14} {_num(r['max_lam_max_error'], '.2e'):>20} "
                         f"{_num(r['max_residual'], '.1e'):>13} {_ratio(r['seconds'], li):>7}")
        lines.append("(engine: landscape.eigen_ratio_map with warm starts; engine-cold: without; li-eigsh: Li et al.'s "
                     "recipe on their product; pyhessian: lambda_max only)")
        if "max_ratio_difference" in m:
            lines.append(f"largest |ratio difference| between engine and li-eigsh: {m['max_ratio_difference']:.2e}")
    if "trace" in result:
        lines += ["", "Hutchinson trace, the same Rademacher probes (max rel diff: largest probe difference / trace)",
                  f"{'method':58s} {'s/probe':>9s} {'(median)':>9s} {'probes':>6s} {'trace':>12s} {'x pyhessian':>12s} "
                  f"{'max rel diff':>13s}"]
        rows = result["trace"]["rows"]
        ph = next((r["seconds"] for r in rows if r["method"].startswith("pyhessian")), None)
        for r in rows:
            lines.append(f"{r['method']:58s} {r['seconds']:9.3f} {r['median']:9.3f} {r['probes']:6d} "
                         f"{r['trace']:12.6g} {_ratio(r['seconds'], ph):>12s} "
                         f"{_num(r.get('max_difference'), '.1e'):>13s}")
    if "blocks" in result:
        b = result["blocks"]
        lines += ["", f"per-layer (block) products H[layer, layer] v, {b['layers']} layers in all",
                  f"{'block':42s} {'size':>8s} {'first s':>9s} {'s/HVP':>9s} {'(median)':>9s} {'HVP/s':>7s} "
                  f"{'x all':>7s}"]
        full = b["rows"][0]["seconds"]
        for r in b["rows"]:
            lines.append(f"{r['block']:42s} {r['size']:8d} {_num(r['first'], '.4f'):>9s} {r['seconds']:9.4f} "
                         f"{r['median']:9.4f} {1 / r['seconds']:7.2f} {_ratio(r['seconds'], full):>7s}")
    if "accuracy" in result:
        lines += ["", "accuracy of one product against the float64 product (relative error of H v)"]
        lines += [f"{r['method']:58s} {r['relative_error']:9.2e}" for r in result["accuracy"]["rows"]]
    walls = ", ".join(f"{k} {result[k]['wall']:.0f} s" for k in result if k != "setup")
    lines += ["", f"section wall times: {walls}"]
    return "\n".join(lines)


ARGUMENTS = {"hessian": hessian_arguments}
RUNNERS = {"hessian": run_hessian}


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a non-positive size, count or tolerance before the benchmark starts (one line, exit 2)."""
    from landscape.errors import ArgumentError, check_scalar

    for name in POSITIVE_INTS + POSITIVE_FLOATS + ("threads",):
        value = getattr(args, name, None)
        if value is None:
            continue
        option = "--" + name.replace("_", "-")
        if name in POSITIVE_FLOATS:
            check_scalar(value, option, float, min=0, include_min=False)
            if not math.isfinite(value):
                raise ArgumentError(f"{option} must be a finite number, got {value!r}.")
        else:
            check_scalar(value, option, int, min=1)


def _checked(run, args: argparse.Namespace) -> int:
    check_arguments(args)
    return run(args)


# -- bench surface --------------------------------------------------------------------------------
def _mb(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2 ** 20:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def surface_table(b) -> str:
    """The table of a :class:`landscape.benchmarks.surface.SurfaceBenchmark`."""
    lines = [f"surface benchmark: {b.model}, {b.parameters / 1e6:.2f}M parameters",
             f"data: {b.data}, {b.samples} samples; {b.grid} x {b.grid} grid; device {b.device}, {b.threads} threads",
             f"forward GFLOP per point {b.flops_per_point / 1e9:.3f}; measured float32 matmul peak "
             f"{b.peak_gflops:.1f} GFLOP/s; best of {b.rounds} rounds",
             f"{'method':36s} {'s/point':>9s} {'ms/point':>9s} {'CPU ms/pt':>9s} {'GFLOP/s':>8s} {'% peak':>7s} "
             f"{'peak MB':>8s} {'RSS MB':>7s} {'x bound':>7s} {'engine speed-up':>16s} {'on CPU time':>11s} "
             f"{'51x51 on 10k':>13s}"]
    for m in b.methods:
        rate = b.gflops(m)
        cpu = "n/a" if m.cpu_per_point is None else f"{m.cpu_per_point * 1e3:.2f}"
        cpu_ratio, over = b.cpu_speedup(m), b.over_bound(m)
        lines.append(f"{m.name:36s} {m.per_point:9.4f} {m.per_point * 1e3:9.2f} {cpu:>9s} {rate:8.2f} "
                     f"{100 * rate / b.peak_gflops:6.1f}% {_mb(b.peak(m)):>8s} {_mb(m.peak_bytes):>7s} "
                     f"{'n/a' if over is None else f'{over:.2f}x':>7s} {b.speedup(m):15.2f}x "
                     f"{'n/a' if cpu_ratio is None else f'{cpu_ratio:.2f}x':>11s} "
                     f"{_duration(b.projected_seconds(m)):>13s}")
    diffs = [(m.name, m.max_rel_diff) for m in b.methods if m.max_rel_diff is not None]
    for name, d in diffs:
        lines.append(f"{name} vs the loop on the same directions: max relative loss difference {d:.1e}")
    mem = b.memory
    shortcut = f" + first-layer shortcut parts {_mb(mem['shortcut'])} MB" if mem.get("shortcut") else ""
    lines.append(f"memory bound: data {_mb(mem['data'])} MB + one forward piece of {mem['piece']} samples "
                 f"{_mb(mem['activations'])} MB + weights {_mb(mem.get('weights', 0))} MB (parameters x (directions "
                 f"+ 3): the engine's centre, directions, point and self-check copy){shortcut} = {_mb(b.bound)} MB "
                 f"(plain bound, model + data + piece: {_mb(b.plain_bound)} MB)")
    for m in b.methods:
        if m.name.startswith("engine") and b.peak(m) is not None:
            within = "within" if b.peak(m) <= b.bound else "OVER"
            lines.append(f"{m.name}: peak {_mb(b.peak(m))} MB, {within} the bound ({b.over_bound(m):.2f}x; "
                         f"{b.peak(m) / max(b.plain_bound, 1):.2f}x the plain bound)")
    lines.append("peak MB: the largest bytes of live torch tensors a method adds (CPU: torch.profiler's allocation "
                 "events; CUDA: the allocator), in a call after the timed rounds; RSS MB: the resident set sampled "
                 "in another such call (counts Python objects and the allocator's slack too).")
    lines.append("GFLOP/s counts the full forward per point, also where the engine's exact shortcuts skip work; "
                 "the projection scales the best round linearly in points and samples; CPU time is the process's "
                 "(all its threads), steadier than wall time when other work shares the machine.")
    return "\n".join(lines)


PRINTERS = {"surface": surface_table}
