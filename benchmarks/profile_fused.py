"""Where the fused path's time goes: per-op CPU time of one forward+backward (torch.profiler), and the per-step
loop split into its recurrent GEMMs (timed alone with the same shapes) and the rest (pointwise, copies).

    python benchmarks/profile_fused.py --cell lstm --size S1

Run with one thread, as the benchmark does. Prints tables; writes nothing.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import rnnlab
from rnnlab.bench import CELLS, SIZES


def best_of(fn, repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cell", default="lstm", choices=list(CELLS))
    p.add_argument("--size", default="S1", choices=list(SIZES))
    p.add_argument("--backend", default="fused")
    p.add_argument("--repeats", type=int, default=5, help="profiled calls; each op's best is kept")
    p.add_argument("--rows", type=int, default=10, help="ops shown")
    p.add_argument("--shapes", action="store_true", help="split each op by its input shapes")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    s = SIZES[args.size]
    cls_name, gates = CELLS[args.cell]
    layer = getattr(rnnlab, cls_name)(s.I, s.H, backend=args.backend)
    nn_layer = getattr(torch.nn, cls_name)(s.I, s.H)
    nn_layer.load_state_dict(layer.state_dict())
    x = torch.randn(s.T, s.B, s.I, requires_grad=True)

    def step(module):
        def fn():
            out, _ = module(x)
            out.sum().backward()
        return fn

    for name, module in (("rnnlab", layer), ("torch.nn", nn_layer)):
        fn = step(module)
        fn()
        # On a shared machine one profile is mostly noise: profile several calls, keep each op's best call.
        best: dict[str, tuple[float, int]] = {}
        for _ in range(args.repeats):
            with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
                fn()
            for e in prof.key_averages(group_by_input_shape=args.shapes):
                ms = e.self_cpu_time_total / 1e3
                key = f"{e.key} {e.input_shapes}" if args.shapes else e.key
                if key not in best or ms < best[key][0]:
                    best[key] = (ms, e.count)
        print(f"== {name} {cls_name} {args.size} (B={s.B} T={s.T} I={s.I} H={s.H}) forward+backward: "
              f"self CPU ms per op (best of {args.repeats} profiled calls)")
        rows = sorted(best.items(), key=lambda kv: -kv[1][0])[:args.rows]
        for key, (ms, count) in rows:
            print(f"  {key[:48] if not args.shapes else key[:110]:48} {ms:9.2f} ms  x{count}")
        print(f"  {'sum of the ops above':48} {sum(ms for _, (ms, _c) in rows):9.2f} ms")

    # The loop's recurrent GEMMs alone: T products (B x H) @ (H x G), forward and backward shapes.
    G = gates * s.H
    h, w = torch.randn(s.B, s.H), torch.randn(G, s.H)
    out_f, out_b, dg = torch.empty(s.B, G), torch.empty(s.B, s.H), torch.randn(s.B, G)
    rec_f = best_of(lambda: [torch.mm(h, w.t(), out=out_f) for _ in range(s.T)])
    rec_b = best_of(lambda: [torch.mm(dg, w, out=out_b) for _ in range(s.T)])
    xin, wih = torch.randn(s.T * s.B, s.I), torch.randn(G, s.I)
    big = best_of(lambda: torch.mm(xin, wih.t()))
    with torch.no_grad():
        fwd_total = best_of(lambda: layer(x))
        nn_fwd = best_of(lambda: nn_layer(x))
    print(f"forward (no_grad): rnnlab {1e3 * fwd_total:.2f} ms, torch.nn {1e3 * nn_fwd:.2f} ms")
    print(f"  input GEMM (T*B x I) @ (I x G) alone:        {1e3 * big:.2f} ms")
    print(f"  T recurrent GEMMs (B x H) @ (H x G) via torch: {1e3 * rec_f:.2f} ms")
    print(f"  rest (pointwise, copies, Python):             {1e3 * (fwd_total - big - rec_f):.2f} ms")
    print(f"backward loop GEMMs (B x G) @ (G x H) x T via torch: {1e3 * rec_b:.2f} ms")


if __name__ == "__main__":
    main()
