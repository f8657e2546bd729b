"""How the ``moe`` generator's size, step time and memory grow with the number of genes.

For each gene count D (default 2000, 3000, 5000 and 17,789) and each configuration (the default
gene-group-token model; with ``--paper`` also the paper's one-token configuration) a fresh
subprocess builds the flow, trains it for a few steps on random standard-normal batches (forward,
backward, gradient clipping, Adam step), and reports:

* ``params``: trainable parameters;
* ``step_s``: median seconds per training step after ``--warmup`` untimed steps (``step_cpu_s``:
  the CPU seconds of this process for it, all threads; on a loaded machine closer to what an idle
  one takes than the wall time);
* ``sample_s``: seconds to sample ``--n-sample`` cells (default model only; the paper's fully
  autoregressive nflows MAF needs D sequential passes, so it is skipped unless ``--paper-sample``);
* ``peak_rss_gib``: the subprocess's peak resident memory (``resource.getrusage``), which includes
  the ~0.4 GiB of the Python/torch runtime (``base_rss_gib``, measured after the imports).

A configuration whose estimated training memory (4 copies of the parameters: weights, gradients, two
Adam moments) exceeds ``--max-gib`` is not run; its row says so.

With ``--maf`` the ``maf`` default is measured too (``config = "maf default"``): the same training
steps on its zuko flow, plus the time and peak RSS of fitting its fixed linear map (z-scoring and
a PCA rotation of the whole gene space, a D x D matrix) on ``--prep-cells`` random cells.

Usage::

    python benchmarks/moe_scaling.py [--genes 2000 3000 5000 17789] [--paper] [--maf] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PAPER_HIDDEN = 1024


def paper_param_count(genes: int, context: int = 0, experts: int = 4) -> int:
    """Parameters of the paper configuration (checked against a built model in ``--check``)."""
    d, h = genes, PAPER_HIDDEN
    mask = d * h + h + h * d + d
    attention = experts * (4 * d * d + 4 * d)
    context_proj = (context * d + d) if context else 0
    gate = (d + context) * h + h + h * experts + experts
    scale_shift = 2 * (d * h + h + h * d + d)
    # nflows MADE: masked input layer, optional context layer, 2 residual blocks of 2 layers, output layer
    made = d * h + h + ((context * h + h) if context else 0) + 2 * 2 * (h * h + h) + h * 2 * d + 2 * d
    return mask + attention + context_proj + gate + scale_shift + made


def _params(paper: bool) -> dict:
    from bench import _presets  # the presets of conf/*/parameters_generation.yml

    return _presets("moe", "paper") if paper else {}


def child(genes: int, paper: bool, steps: int, warmup: int, batch_size: int, n_sample: int, sample: bool,
          threads: int | None) -> dict:
    import resource

    import torch

    from cellsynth.generators.moe import MOEParams
    from cellsynth.generators.moe.modules import MOEFlow

    if threads:
        torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    torch.manual_seed(0)
    params = MOEParams(**_params(paper))
    context = 0 if paper else 9  # the default is conditioned on the cell type (9 PBMC3K types)
    started = time.perf_counter()
    flow = MOEFlow(genes, context, params)
    build_s = time.perf_counter() - started
    n_params = sum(p.numel() for p in flow.parameters())
    optimizer = torch.optim.Adam(flow.parameters(), lr=params.learning_rate)
    gen = torch.Generator().manual_seed(1)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        x = torch.randn(batch_size, genes, generator=gen)
        c = None if not context else torch.nn.functional.one_hot(
            torch.randint(0, context, (batch_size,), generator=gen), context).float()
        t0, cpu0 = time.perf_counter(), time.process_time()
        log_p, mask_mean = flow.log_prob(x, c)
        loss = -log_p.mean() + params.mask_penalty * mask_mean
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - cpu0)
    times.sort()
    cpu_times.sort()
    sample_s = None
    if sample:
        flow.eval()
        c = None if not context else torch.nn.functional.one_hot(torch.arange(n_sample) % context, context).float()
        t0 = time.perf_counter()
        flow.sample(n_sample, c, torch.Generator().manual_seed(2))
        sample_s = time.perf_counter() - t0
    return {
        "config": "paper" if paper else "default",
        "genes": genes,
        "params": n_params,
        "build_s": round(build_s, 2),
        "step_s": round(times[len(times) // 2], 4),
        "step_cpu_s": round(cpu_times[len(cpu_times) // 2], 4),
        "sample_s": None if sample_s is None else round(sample_s, 3),
        "base_rss_gib": round(base_rss, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "threads": torch.get_num_threads(),
    }


def child_maf(genes: int, steps: int, warmup: int, batch_size: int, n_sample: int, threads: int | None,
              prep_cells: int) -> dict:
    """The ``maf`` default at ``genes`` genes: its fixed linear map (z-scoring, PCA rotation of the
    whole gene space, fitted on ``prep_cells`` random cells) and training steps of its zuko flow."""
    import resource

    import numpy as np
    import torch

    from cellsynth.generators.maf import MAFParams, _build_zuko, _LinearMap

    if threads:
        torch.set_num_threads(threads)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = MAFParams()
    context = 9
    rng = np.random.default_rng(0)
    X = rng.poisson(0.5, size=(prep_cells, genes)).astype(np.float32)
    labels = np.arange(prep_cells) % context
    started = time.perf_counter()
    prep, _ = _LinearMap.fit_transform(X, labels, n_types=context, standardize=True,
                                       pca_components=params.pca_components, seed=0)
    prep_s = time.perf_counter() - started
    prep_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del prep, X
    torch.manual_seed(0)
    started = time.perf_counter()
    flow = _build_zuko(genes, context, params)
    build_s = time.perf_counter() - started
    n_params = sum(p.numel() for p in flow.parameters())
    optimizer = torch.optim.Adam(flow.parameters(), lr=params.learning_rate)
    gen = torch.Generator().manual_seed(1)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        x = torch.randn(batch_size, genes, generator=gen)
        c = torch.nn.functional.one_hot(torch.randint(0, context, (batch_size,), generator=gen), context).float()
        t0, cpu0 = time.perf_counter(), time.process_time()
        loss = -flow(c).log_prob(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - cpu0)
    times.sort()
    cpu_times.sort()
    flow.eval()
    c = torch.nn.functional.one_hot(torch.arange(n_sample) % context, context).float()
    t0 = time.perf_counter()
    with torch.no_grad():
        flow(c).sample()
    sample_s = time.perf_counter() - t0
    return {
        "config": "maf default",
        "genes": genes,
        "params": n_params,
        "build_s": round(build_s, 2),
        "step_s": round(times[len(times) // 2], 4),
        "step_cpu_s": round(cpu_times[len(cpu_times) // 2], 4),
        "sample_s": round(sample_s, 3),
        "linear_map_s": round(prep_s, 2),
        "linear_map_peak_rss_gib": round(prep_rss, 3),
        "base_rss_gib": round(base_rss, 3),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 3000, 5000, 17789])
    parser.add_argument("--paper", action="store_true", help="also run the paper's one-token configuration")
    parser.add_argument("--paper-sample", action="store_true", help="also time the paper's (D-pass) sampling")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n-sample", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--max-gib", type=float, default=24.0, help="skip configurations estimated above this")
    parser.add_argument("--maf", action="store_true", help="also run the maf default (linear map + zuko flow)")
    parser.add_argument("--prep-cells", type=int, default=2000, help="random cells the maf linear map is fitted on")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    parser.add_argument("--check", action="store_true", help="verify paper_param_count against a built model")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child)
        run = child_maf if spec.pop("model", "moe") == "maf" else child
        print(json.dumps(run(**spec)))
        return
    if args.check:
        from cellsynth.generators.moe import MOEParams
        from cellsynth.generators.moe.modules import MOEFlow

        for genes in (40, 64):
            built = sum(p.numel() for p in MOEFlow(genes, 0, MOEParams(**_params(True))).parameters())
            assert built == paper_param_count(genes), (genes, built, paper_param_count(genes))
        print("paper_param_count matches built models")

    configs = [False, True] if args.paper else [False]
    rows = []
    for paper in configs:
        for genes in args.genes:
            if paper:
                estimate = 4 * 4 * paper_param_count(genes) / 2**30
                if estimate > args.max_gib:
                    rows.append({"config": "paper", "genes": genes, "params": paper_param_count(genes),
                                 "note": f"not run: >= {estimate:.0f} GiB for weights+grads+Adam"})
                    print(rows[-1], flush=True)
                    continue
            spec = {"genes": genes, "paper": paper, "steps": args.steps, "warmup": args.warmup,
                    "batch_size": args.batch_size, "n_sample": args.n_sample,
                    "sample": (not paper) or args.paper_sample, "threads": args.threads}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append({"config": "paper" if paper else "default", "genes": genes,
                             "note": f"failed (exit {proc.returncode}): {tail[0][:120]}"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    if args.maf:
        for genes in args.genes:
            spec = {"model": "maf", "genes": genes, "steps": args.steps, "warmup": args.warmup,
                    "batch_size": args.batch_size, "n_sample": args.n_sample, "threads": args.threads,
                    "prep_cells": args.prep_cells}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                rows.append({"config": "maf default", "genes": genes,
                             "note": f"failed (exit {proc.returncode}): {tail[0][:120]}"})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)

    import pandas as pd

    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
