"""Time of one GAAL step over one concat (joint-training) step, same encoders and batch.

    python benchmarks/step_cost.py [--backbone test_resnet] [--image-size 64] [--batch 128] [--repeats 20]
    OMP_NUM_THREADS=1 python benchmarks/step_cost.py --clock cpu     # on a machine shared with others

Rows: GAAL with `guidance: fresh` (the default: one extra no-grad forward of the first encoder
after its step; target <= 1.3x concat on the CPU) and `guidance: stale` (no extra forward;
target <= 1.05x), beside the official code's step pattern, in which each turn re-runs the other
encoder's forward and back-propagates the hard-sample loss through it before throwing that
gradient away (REFERENCE §1 measured about 1.8-1.9x).

`--clock cpu` times the process's own CPU time (time.process_time) instead of the wall clock:
with one thread it measures the work of a step even while other processes load the cores.
The extra cost of `fresh` is one no-grad forward of the image encoder, so its ratio is about
1 + forward / (forward + backward) of that encoder: on a CPU with contiguous tensors a forward
costs 0.33-0.43 of forward + backward (test_resnet 0.40-0.43, resnet18 0.38, resnet50 0.33),
in channels_last (`--channels-last`, the layout the engine uses on CUDA) about 0.28.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods import surgery
from gaal_cli.methods.base import cross_entropy
from gaal_cli.training.engine import build_optimizer, create_method


def official_pattern_step(method, batch, optimizer):
    """GAAL as the official code runs it: the guidance loss goes back through the other encoder."""
    encoders = {"image": method.encoders.image, "tabular": method.encoders.tabular}
    inputs = {"image": batch.image, "tabular": batch.tabular}
    head = list(method.head.parameters())
    for current, other in (("image", "tabular"), ("tabular", "image")):
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(method.head(encoders[current](inputs[current])), batch.label)
        loss.backward()
        g = surgery.flatten(p.grad for p in head)
        logits = method.head(encoders[other](inputs[other]))
        rows = surgery.top_uncertain(logits.detach(), 0.5)
        params = head + list(encoders[other].parameters())
        grads = torch.autograd.grad(cross_entropy(logits[rows], batch.label[rows]), params)
        g_p = surgery.flatten(grads[: len(head)])
        for p, new in zip(head, surgery.unflatten(surgery.align(g, g_p), head)):
            p.grad.copy_(new)
        optimizer.step()


def time_interleaved(steps: dict, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each step, per variant; the variants take turns so that load changes hit all alike."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = clock()
            step()
            times[name].append(clock() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="wall clock or process CPU time")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="image encoder and images in channels_last for every variant (the engine does this on CUDA only)",
    )
    args = parser.parse_args()

    overrides = [
        f"model.image_backbone={args.backbone}",
        f"model.feature_dim={args.feature_dim}",
        f"data.image_size={args.image_size}",
        f"data.synthetic.n_train={args.batch}",
        "data.synthetic.n_val=10",
        "data.synthetic.n_test=10",
        "train.device=cpu",
    ]
    variants = {
        "concat": ["method=concat"],
        "fresh": ["method=gaal", "methods.gaal.guidance=fresh"],
        "stale": ["method=gaal", "methods.gaal.guidance=stale"],
        "official": ["method=gaal"],
    }
    steps = {}
    for name, extra in variants.items():
        config = load_config(overrides=[*overrides, *extra])
        torch.manual_seed(0)
        data = build_data(config.data, 0)
        batch = next(iter(make_loader(data.train, args.batch, shuffle=False)))
        method = create_method(config, data).train()
        if args.channels_last:
            method.encoders.image.to(memory_format=torch.channels_last)
            batch = batch._replace(image=batch.image.contiguous(memory_format=torch.channels_last))
        optimizer, _ = build_optimizer(method, config.train)
        if name == "official":
            steps[name] = lambda m=method, b=batch, o=optimizer: official_pattern_step(m, b, o)
        else:
            steps[name] = lambda m=method, b=batch, o=optimizer: m.train_step(b, o)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    results = time_interleaved(steps, args.repeats, clock)

    # the median is the figure to quote; the minimum, the step least disturbed by other load
    median = {name: statistics.median(t) for name, t in results.items()}
    fastest = {name: min(t) for name, t in results.items()}
    print(
        f"backbone {args.backbone}, images {args.image_size}px, batch {args.batch}, "
        f"threads {torch.get_num_threads()}, {args.clock} clock" + (", channels_last" if args.channels_last else "")
    )
    print(f"{'step':<30}{'median s':>10}{'x concat':>10}{'min s':>10}{'x concat':>10}")
    labels = {
        "concat": "concat (joint training)",
        "fresh": "gaal, guidance: fresh",
        "stale": "gaal, guidance: stale",
        "official": "gaal, official step pattern",
    }
    for name in results:
        ratios = f"{median[name]:>10.4f}{median[name] / median['concat']:>10.2f}"
        ratios += f"{fastest[name]:>10.4f}{fastest[name] / fastest['concat']:>10.2f}"
        print(f"{labels[name]:<30}{ratios}")


if __name__ == "__main__":
    main()
