"""Loss-surface speed and memory: this engine against Li et al.'s per-point loop and loss_landscapes.

All methods evaluate the same model on the same data over the same nx x ny grid in one run,
taking turns within each round so that the load of a shared machine falls on all alike:

* ``engine``: :func:`landscape.surface.surface` (loss and accuracy per point), once per
  ``--points-per-launch`` value; with ``--ablation`` also with each of its speed-ups switched
  off (channels-last, batchnorm folding and the first-layer shortcut, cache-sized forward pieces);
* ``loop``: what Li et al.'s reference code does per point: write ``w + a d1 + b d2`` into the
  model's parameters, then iterate a DataLoader of 128 held on the host, moving each batch to
  the device (same directions as the engine, so the values are compared: max relative difference);
* ``loss_landscapes``: ``loss_landscapes.planar_interpolation`` (PyPI ``loss-landscapes``,
  optional peer) over the same plane: its per-point work is that of its ``random_plane`` (the
  parameters moved in place, the whole data in one forward, loss only), but the directions are
  ours, so it runs on CUDA too (``random_plane`` draws its directions on the CPU and fails on a
  GPU model). Its grid is shifted by one step in every other column (the library's own
  iteration), so only its time is compared.

Models (``--arch``): ``mlp`` is the shipped digits mlp-ce checkpoint; ``resnet20`` and ``vgg11``
are the zoo's when registered, else stand-ins of the same shape (the zoo ``resnet`` with widths
16-32-64 and three blocks per stage, 0.27M parameters; a VGG-11 with batchnorm built here from
``torch.nn`` layers, 9.2M parameters); any other registered name is built with the data's
shape. Models other than a checkpoint have seeded random weights, with batchnorm statistics
measured on the data so that eval-mode activations are of a trained net's scale. ``--data
synthetic`` (the default for them) is seeded uniform 3x32x32 images with random labels: fine for
timing, meaningless as values (the output says so).

Reported per method: seconds per point, effective GFLOP/s (forward FLOPs of the full model per
point, counted by ``torch.utils.flop_counter``, even where the engine's shortcuts skip some),
the % of a float32 matmul peak measured in the same run, the speed-up of the engine over it,
the projected time of a 51 x 51 surface on 10,000 images, and its peak memory.

Memory is measured after the timed rounds, in one more untimed call of each method, so every
method has already run once (library pages, oneDNN's kernels, allocator arenas and lazily
imported modules are paid by then, and not blamed on whichever method happened to run first);
each call starts from the same state: the model, the bench's prepared inputs and the directions
are held, freed heap is handed back (``malloc_trim``), and only what the call adds is counted.
On the CPU two figures are taken: **allocations**, the exact peak of the bytes of live torch
tensors during the call, from the allocation and free events of ``torch.profiler`` (a second
call: the profiler's own records would distort the other figure), and the **resident set**
sampled every millisecond, which also counts Python objects and the allocator's slack. On CUDA
the allocator's peak is both. The engine takes a :class:`landscape.Dataset` and prepares its
own copy of the inputs, so its figure includes the data; the loop and loss_landscapes are
handed the bench's prepared tensor, whose bytes are not theirs.

The bound the engine's peak is held to (``memory`` of the result, counted outside the engine):
the data, the allocations of one plain forward pass over one of the engine's forward pieces,
``n_dirs + 3`` copies of the parameters (the flat centre, directions and current point the
engine keeps, and the offset copy its self-check makes at construction), and, where the
first-layer shortcut is used, its ``n_dirs + 2`` copies of that layer's output on all the data.
The issue's plain bound, model + data + one piece, is printed beside it. Benchmarks never
assert; run them on a quiet machine. :func:`run` returns a :class:`SurfaceBenchmark`; the CLI
prints it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

DEFAULT_CKPT = Path(__file__).resolve().parents[2] / "trained_models" / "mlp-ce.safetensors"
PROJECTION = (51 * 51, 10_000)  # a 51 x 51 surface on 10,000 images
LOOP_BATCH = 128


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``landscape bench surface``."""
    parser.add_argument("--checkpoint", default=None, help="checkpoint to use instead of --arch")
    parser.add_argument("--arch", default="mlp",
                        help="mlp (the shipped digits mlp-ce), resnet20, vgg11, or any registered architecture "
                             "(random weights); default mlp")
    parser.add_argument("--data", default=None,
                        help="dataset spec (test split), or synthetic[:CxHxW] (default: digits for mlp and "
                             "checkpoints, synthetic 3x32x32 otherwise)")
    parser.add_argument("--samples", type=int, default=None,
                        help="seeded subset size (default: the whole split; 256 synthetic images)")
    parser.add_argument("--grid", type=int, default=51, help="points per axis (default: 51)")
    parser.add_argument("--repeat", "--rounds", dest="repeat", type=int, default=5,
                        help="rounds; each method's best and median round are reported (default: 5)")
    parser.add_argument("--points-per-launch", type=int, nargs="+", default=None, metavar="K",
                        help="engine rows with K grid points per launch (vmap); default: the device's default")
    parser.add_argument("--ablation", action="store_true",
                        help="also time the engine with each speed-up switched off")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's default); 1 is steadier on a shared machine")
    parser.add_argument("--no-peer", action="store_true", help="skip loss_landscapes")
    parser.add_argument("--no-loop", action="store_true", help="skip Li et al.'s loop")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


# -- results ----------------------------------------------------------------------------------
@dataclasses.dataclass
class MethodTiming:
    """One method of the benchmark: its times and memory."""

    name: str
    seconds: list[float]
    points: int
    peak_bytes: int | None = None
    max_rel_diff: float | None = None  # against the loop, on the same directions
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)  # process CPU time of each round
    allocated_bytes: int | None = None  # peak of live torch tensors (CPU: profiler events; CUDA: the allocator)

    @property
    def best(self) -> float:
        """Best round, seconds for the whole grid."""
        return min(self.seconds)

    @property
    def median(self) -> float:
        """Median round, seconds for the whole grid."""
        return float(np.median(self.seconds))

    @property
    def per_point(self) -> float:
        """Seconds per grid point (best round)."""
        return self.best / self.points

    @property
    def cpu_per_point(self) -> float | None:
        """Process CPU seconds per grid point (best round): steadier than wall time on a shared machine."""
        return min(self.cpu_seconds) / self.points if self.cpu_seconds else None


@dataclasses.dataclass
class SurfaceBenchmark:
    """What ``landscape bench surface`` measured, for printing or JSON."""

    model: str
    data: str
    synthetic: bool
    samples: int
    grid: int
    device: str
    threads: int
    rounds: int
    flops_per_point: float
    peak_gflops: float
    methods: list[MethodTiming]
    memory: dict  # bytes of the bound's parts (see :func:`memory_bound`) and the piece's size in samples
    parameters: int = 0

    @property
    def engine(self) -> MethodTiming:
        """The first engine row (the reference of every speed-up)."""
        return next(m for m in self.methods if m.name.startswith("engine"))

    def find(self, prefix: str) -> MethodTiming | None:
        """The first method whose name starts with ``prefix``."""
        return next((m for m in self.methods if m.name.startswith(prefix)), None)

    def gflops(self, m: MethodTiming) -> float:
        """Effective GFLOP/s of a method (full forward FLOPs per point)."""
        return self.flops_per_point / m.per_point / 1e9

    def speedup(self, m: MethodTiming, over: MethodTiming | None = None) -> float:
        """How many times faster ``over`` (default the engine) is than ``m``, best rounds."""
        return m.per_point / (over or self.engine).per_point

    def cpu_speedup(self, m: MethodTiming, over: MethodTiming | None = None) -> float | None:
        """The same on process CPU time."""
        over = over or self.engine
        return m.cpu_per_point / over.cpu_per_point if m.cpu_per_point and over.cpu_per_point else None

    @property
    def bound(self) -> int:
        """Bytes the engine may add by design (see the module docstring)."""
        return bound_bytes(self.memory)

    @property
    def plain_bound(self) -> int:
        """Model + data + one forward piece: the issue's bound, without the engine's own copies of the weights."""
        return self.memory["model"] + self.memory["data"] + self.memory["activations"]

    def peak(self, m: MethodTiming) -> int | None:
        """A method's peak held against the bound: allocations where measured, else the resident set."""
        return m.allocated_bytes if m.allocated_bytes is not None else m.peak_bytes

    def over_bound(self, m: MethodTiming) -> float | None:
        """A method's peak as a multiple of :attr:`bound`."""
        peak = self.peak(m)
        return None if peak is None else peak / max(self.bound, 1)

    def projected_seconds(self, m: MethodTiming) -> float:
        """Projected seconds of a 51 x 51 surface on 10,000 images (linear in points and samples)."""
        points, samples = PROJECTION
        return m.per_point * points * samples / self.samples

    def to_dict(self) -> dict:
        """Plain JSON-able numbers, derived figures included."""
        out = dataclasses.asdict(self)
        out["methods"] = [dict(dataclasses.asdict(m), best=m.best, median=m.median, per_point=m.per_point,
                               cpu_per_point=m.cpu_per_point, gflops=self.gflops(m),
                               pct_peak=100 * self.gflops(m) / self.peak_gflops, engine_speedup=self.speedup(m),
                               engine_cpu_speedup=self.cpu_speedup(m), projected_seconds=self.projected_seconds(m),
                               over_bound=self.over_bound(m))
                          for m in self.methods]
        out.update(bound=self.bound, plain_bound=self.plain_bound)
        return out


# -- measuring --------------------------------------------------------------------------------
def matmul_peak(n: int | None = None, windows: int = 8, seconds: float = 0.08,
                device: torch.device | str = "cpu") -> float:
    """Measured float32 matmul rate in GFLOP/s: ``n x n`` by ``n x n`` products, best of ``windows`` short windows.

    The best window is taken because other work on a shared machine only ever slows a window down.
    On CUDA TF32 is off (as in the engine), so this is the float32 peak.
    """
    from landscape.evaluator import exact_float32

    device = torch.device(device)
    n = n or (4096 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    best = 0.0
    with exact_float32(device):
        torch.mm(a, b, out=out)
        for _ in range(windows):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                torch.mm(a, b, out=out)
                reps += 1
            _sync(device)
            best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass over ``x`` (matmuls and convolutions, as FlopCounterMode counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _rss() -> int:
    """Resident set size of this process in bytes (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _release_host_memory() -> None:
    """Give freed heap memory back to the system (glibc), so the next peak starts from a clean baseline."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory above the start of a block: CUDA allocator peak, or the sampled resident set on the CPU."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak = 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        _release_host_memory()
        self._base, self._stop = _rss(), threading.Event()
        self._max = self._base

        def sample():
            while not self._stop.wait(0.001):
                self._max = max(self._max, _rss())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = max(0, torch.cuda.max_memory_allocated(self.device) - self._base)
            return False
        self._stop.set()
        self._thread.join()
        self.peak = max(0, max(self._max, _rss()) - self._base)
        return False


class AllocatedPeak:
    """Exact peak of the bytes of live torch tensors that a block allocates on the CPU, beyond those it frees.

    Read from the allocation and free events of ``torch.profiler`` (``profile_memory``); counts
    torch tensors only, so one-time library pages and Python objects are not counted. ``peak``
    stays None on CUDA (:class:`PeakMemory` is exact there) and where the profiler's events are
    not available.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak: int | None = None
        self._prof = None

    def __enter__(self):
        if self.device.type == "cpu":
            from torch.profiler import ProfilerActivity, profile

            _release_host_memory()
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self._prof is None:
            return False
        self._prof.__exit__(*exc)
        with contextlib.suppress(AttributeError, RuntimeError):
            events = self._prof.profiler.kineto_results.events()
            self.peak = running_peak((e.start_ns(), e.nbytes()) for e in events
                                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        return False


def running_peak(events) -> int:
    """Largest running total of ``(time, +allocated/-freed bytes)`` events taken in time order (0 if never above)."""
    total = peak = 0
    for _, nbytes in sorted(events, key=lambda e: e[0]):  # a stable sort: simultaneous events keep their order
        total += nbytes
        peak = max(peak, total)
    return int(peak)


def li_loop(model, criterion, x, y, dirs, xs, ys, batch_size: int = LOOP_BATCH) -> np.ndarray:
    """Li et al.'s per-point loop: set weights, iterate a host DataLoader, accumulate the loss. Returns loss[j, i]."""
    from torch.utils.data import DataLoader, TensorDataset

    from landscape.objective import loss_and_logits

    device = x.device
    model = copy.deepcopy(model)  # once, as Li et al. do; the per-point work is below
    params = list(model.parameters())
    base = [p.detach().clone() for p in params]
    d1 = list(dirs.tensors(0, device=device).values())
    d2 = list(dirs.tensors(1, device=device).values())
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch_size, shuffle=False)
    loss = np.empty((len(ys), len(xs)))
    with torch.no_grad():
        for j, b in enumerate(ys):
            for i, a in enumerate(xs):
                for p, w, u, v in zip(params, base, d1, d2):
                    p.data = w + a * u + b * v
                total, n = 0.0, 0
                for xb, yb in loader:
                    xb, yb = xb.to(device), yb.to(device)
                    batch_loss, _ = loss_and_logits(model, criterion, xb, yb)
                    total += batch_loss.item() * len(yb)
                    n += len(yb)
                loss[j, i] = total / n
    return loss


def loss_landscapes_plane(library, model: nn.Module, metric, dirs, n: int) -> np.ndarray:
    """``loss_landscapes.planar_interpolation`` over ``[-1, 1]^2`` of our directions, ``n`` steps per axis."""
    from landscape.directions import offset_parameters

    corners = []
    for c in ([-1.0, -1.0], [-1.0 + 2 * n / (n - 1), -1.0], [-1.0, -1.0 + 2 * n / (n - 1)]):
        m = copy.deepcopy(model)
        m.load_state_dict(offset_parameters(model, dirs, c), strict=False)
        corners.append(m)
    return library.planar_interpolation(*corners, metric, steps=n)


def _interleaved(methods: dict, repeat: int, device) -> tuple[dict, dict, dict, dict]:
    """Wall and CPU times of each method over ``repeat`` rounds, the methods taking turns within a round.

    Then, every method having run, the peak memory of each in untimed calls (see the module
    docstring): ``peaks[name] = (resident set, allocations)``.
    """
    times: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    outputs = {}
    for _ in range(max(1, repeat)):
        for name, fn in methods.items():
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    peaks = {}
    for name, fn in methods.items():
        outputs[name] = None  # dropped first, so that the call starts where its timed ones did
        rss, allocated, outputs[name] = _peaks(fn, device)
        peaks[name] = (rss, allocated)
    return times, cpu, outputs, peaks


def _peaks(fn, device) -> tuple[int, int | None, object]:
    """``(resident-set peak, allocation peak, result)`` of ``fn`` (on CUDA both peaks are the allocator's)."""
    with PeakMemory(device) as rss:
        out = fn()
    if torch.device(device).type == "cuda":
        return rss.peak, rss.peak, out
    del out
    with AllocatedPeak(device) as allocated:
        out = fn()
    return rss.peak, allocated.peak, out


# -- models and data ----------------------------------------------------------------------------
def vgg11_bn(input_shape=(3, 32, 32), num_classes: int = 10) -> nn.Module:
    """VGG-11 with batchnorm and a CIFAR head (Simonyan & Zisserman's configuration A), from ``torch.nn`` layers.

    The stand-in for the zoo's ``vgg11`` until it is registered: 8 convolutions with batchnorm
    and ReLU, five max-pools, one linear classifier (9.2M parameters at 3x32x32).
    """
    layers: list[nn.Module] = []
    cin, size = input_shape[0], input_shape[1]
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            size //= 2
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * max(size, 1) ** 2, num_classes))


def build_model(arch: str, input_shape, num_classes: int, seed: int) -> tuple[nn.Module, str]:
    """A seeded random model of ``arch`` and a description of what it is."""
    from landscape import models

    torch.manual_seed(seed)
    if arch in models.names():
        return models.build(arch, input_shape=input_shape, num_classes=num_classes), f"{arch} (zoo)"
    if arch == "resnet20":
        model = models.build("resnet", input_shape=input_shape, num_classes=num_classes, widths=(16, 32, 64),
                             blocks=(3, 3, 3))
        return model, "resnet20 stand-in (zoo 'resnet', widths 16-32-64, 3 blocks per stage)"
    if arch == "vgg11":
        return vgg11_bn(input_shape, num_classes), "vgg11 stand-in (VGG-11 with batchnorm built from torch.nn)"
    models.resolve(arch)  # raises the registry's error with its suggestions
    raise AssertionError  # pragma: no cover


def synthetic_data(spec: str, n: int, seed: int, num_classes: int = 10):
    """Seeded uniform images in [0, 1] with random labels, from ``synthetic[:CxHxW]`` (default 3x32x32)."""
    from landscape.data import Dataset
    from landscape.errors import ArgumentError

    _, _, shape = spec.partition(":")
    try:
        dims = tuple(int(v) for v in (shape or "3x32x32").lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ArgumentError(f"--data {spec!r}: write synthetic or synthetic:CxHxW, e.g. synthetic:3x32x32.")
    rng = np.random.default_rng(seed)
    x = rng.random((n, *dims), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int64)
    return Dataset(x, y, [str(i) for i in range(num_classes)], f"synthetic {'x'.join(map(str, dims))} [{n}]")


def _setup(args):
    """``(checkpoint, data, model description, synthetic?)`` from the options."""
    import landscape as ls
    from landscape.batchnorm import batchnorm_modules, recompute_statistics
    from landscape.checkpoint import as_checkpoint
    from landscape.device import resolve_device

    device = resolve_device(args.device)
    if args.checkpoint or args.arch == "mlp":
        path = args.checkpoint or str(DEFAULT_CKPT)
        ck = ls.load_checkpoint(path, device=device, trust_code=getattr(args, "trust_code", False))
        spec = args.data or "digits"
        described = f"{ck.name} (checkpoint)"
    else:
        spec = args.data or "synthetic"
        shape = (3, 32, 32)
        if spec.startswith("synthetic"):
            shape = synthetic_data(spec, 1, 0).input_shape
        else:
            shape = ls.load_dataset(spec, split="test").input_shape
        model, described = build_model(args.arch, shape, 10, args.seed)
        ck = as_checkpoint(model.to(device).eval(), criterion="ce")
    synthetic = spec.startswith("synthetic")
    if synthetic:
        data = synthetic_data(spec, args.samples or 256, args.seed)
    else:
        data = ls.load_dataset(spec, split="test").subset(args.samples, seed=args.seed)
    if not (args.checkpoint or args.arch == "mlp") and batchnorm_modules(ck.model):
        # random weights: give the batchnorms affine parameters off their initial (1, 0) and the data's
        # statistics, as training would (and filter normalisation would divide by the norm of a zero bias)
        gen = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for _, bn in batchnorm_modules(ck.model):
                if bn.affine:
                    bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
                    bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=gen))
        ck.model.load_state_dict(recompute_statistics(ck.model, None, data, device=device), strict=False)
        described += ", random weights, batchnorm statistics measured on the data"
    return ck, data, described, synthetic


def memory_bound(ck, x: torch.Tensor, y: torch.Tensor, dirs) -> dict:
    """The parts of the engine's memory bound, in bytes, counted outside the engine (see the module docstring).

    ``model`` (parameters and buffers), ``data`` (the prepared inputs), ``activations`` (the
    allocations of a plain forward over one forward piece of ``piece`` samples, the engine's
    choice), ``weights`` (``n_dirs + 3`` copies of the parameters) and ``shortcut`` (``n_dirs + 2``
    copies of the first layer's output on all the data where the engine precomputes it, else 0).
    """
    from landscape.evaluator import GridEvaluator

    # an engine is built once only to read its choices: the piece size and whether the shortcut is used
    ev = GridEvaluator(ck.model, ck.criterion, x, y, dirs)
    piece, layer = ev.forward_batch, ev.shortcut_layer
    del ev
    model_bytes = sum(t.numel() * t.element_size() for t in list(ck.model.parameters()) + list(ck.model.buffers()))
    param_bytes = sum(p.numel() * p.element_size() for p in ck.model.parameters())
    shortcut = 0
    if layer is not None:
        per_sample = []
        hook = layer.register_forward_hook(lambda m, args, out: per_sample.append(out[0].numel()))
        try:
            with torch.inference_mode():
                ck.model(x[:1])
        finally:
            hook.remove()
        shortcut = (dirs.n + 2) * len(x) * per_sample[0] * x.element_size()

    def forward():
        with torch.inference_mode():
            ck.model(x[:piece])

    rss, allocated, _ = _peaks(forward, ck.device)
    return {"model": model_bytes, "data": x.numel() * x.element_size(),
            "activations": rss if allocated is None else allocated, "piece": piece,
            "weights": (dirs.n + 3) * param_bytes, "shortcut": shortcut}


def bound_bytes(memory: dict) -> int:
    """The engine's bound from the parts of :func:`memory_bound`: data + one piece + weights + shortcut parts."""
    return int(memory["data"] + memory["activations"] + memory.get("weights", 0) + memory.get("shortcut", 0))


def run(args) -> SurfaceBenchmark:
    """Run the methods in one session and return their measurements (the CLI prints them)."""
    from landscape.directions import random_directions
    from landscape.errors import check_scalar
    from landscape.surface import surface

    if args.threads:
        torch.set_num_threads(check_scalar(args.threads, "--threads", int, min=1))
    n = check_scalar(args.grid, "--grid", int, min=2)
    ck, data, described, synthetic = _setup(args)
    x, y = ck.prepare(data)
    xs = ys = np.linspace(-1, 1, n)
    dirs = random_directions(ck.model, n=2, seed=args.seed)
    points = n * n
    probe = x[: min(len(x), 64)]
    flops = forward_flops(ck.model, probe) * len(x) / len(probe)
    peak = matmul_peak(device=ck.device)
    memory = memory_bound(ck, x, y, dirs)

    def engine(**kw):
        return lambda: surface(ck, data, dirs, x=(-1, 1, n), y=(-1, 1, n), progress=False, **kw)

    methods = {}
    for k in args.points_per_launch or [None]:
        label = "engine" if k is None else f"engine ({k}/launch)"
        methods[label] = engine(points_per_batch=k)
    if args.ablation:
        from landscape import evaluator

        def without(**attrs):
            def fn():
                saved = {a: getattr(evaluator, a) for a in attrs}
                try:
                    for a, v in attrs.items():
                        setattr(evaluator, a, v)
                    return surface(ck, data, dirs, x=(-1, 1, n), y=(-1, 1, n), progress=False)
                finally:
                    for a, v in saved.items():
                        setattr(evaluator, a, v)
            return fn

        methods["engine, NCHW (no channels-last)"] = without(CHANNELS_LAST_MAX_WIDTH=0)
        methods["engine, no folding/shortcut"] = engine(shortcut=False)
        methods["engine, one forward piece"] = without(CPU_PIECE_BYTES=1 << 62, CUDA_PIECE_FRACTION=1e9)
    if not args.no_loop:
        methods["loop (Li et al., DataLoader 128)"] = lambda: li_loop(ck.model, ck.criterion, x, y, dirs, xs, ys)
    if not args.no_peer:
        try:
            import loss_landscapes
            from loss_landscapes.metrics import Loss
        except ImportError:
            print("loss_landscapes is not installed; skipping that peer (pip install loss-landscapes)")
        else:
            metric = Loss(lambda logits, target: ck.criterion(logits, target), x, y)
            methods["loss_landscapes"] = lambda: loss_landscapes_plane(loss_landscapes, ck.model, metric, dirs, n)

    times, cpu, outs, peaks = _interleaved(methods, args.repeat, ck.device)
    loop = outs.get("loop (Li et al., DataLoader 128)")
    rows = []
    for name, ts in times.items():
        diff = None
        if loop is not None and name.startswith("engine"):
            diff = float(np.nanmax(np.abs(outs[name].loss - loop) / np.abs(loop)))
        rss, allocated = peaks[name]
        rows.append(MethodTiming(name, ts, points, rss, diff, cpu[name], allocated))
    return SurfaceBenchmark(
        model=described, data=data.name + (" (synthetic: timing only)" if synthetic else ""), synthetic=synthetic,
        samples=len(data), grid=n, device=str(ck.device), threads=torch.get_num_threads(),
        rounds=max(1, args.repeat), flops_per_point=float(flops), peak_gflops=peak, methods=rows, memory=memory,
        parameters=sum(p.numel() for p in ck.model.parameters()))
