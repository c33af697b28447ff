"""Time of one GAAL step over one concat (joint-training) step, same encoders and batch.

    python benchmarks/step_cost.py [--backbone test_resnet] [--image-size 64] [--batch 128] [--repeats 20]

GAAL's goal is <= 1.15x concat. For reference it also times the official code's step pattern,
in which each phase re-runs the other encoder and back-propagates the hard-sample loss through
it before throwing that gradient away (REFERENCE §1 measured about 1.8-1.9x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from gaal_cli import surgery
from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.engine import build_optimizer, create_method
from gaal_cli.methods.base import cross_entropy


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


def time_interleaved(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds per step; the variants take turns so that load changes hit all alike."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="test_resnet")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
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
    steps = {}
    for name in ("concat", "gaal", "official"):
        config = load_config(overrides=[*overrides, f"method={'gaal' if name == 'official' else name}"])
        torch.manual_seed(0)
        data = build_data(config.data, 0)
        batch = next(iter(make_loader(data.train, args.batch, shuffle=False)))
        method = create_method(config, data).train()
        optimizer, _ = build_optimizer(method, config.train)
        if name == "official":
            steps[name] = lambda m=method, b=batch, o=optimizer: official_pattern_step(m, b, o)
        else:
            steps[name] = lambda m=method, b=batch, o=optimizer: m.train_step(b, o)
    results = time_interleaved(steps, args.repeats)

    base = results["concat"]
    print(
        f"backbone {args.backbone}, images {args.image_size}px, batch {args.batch}, threads {torch.get_num_threads()}"
    )
    print(f"{'step':<28}{'median s':>10}{'x concat':>10}")
    labels = {
        "concat": "concat (joint training)",
        "gaal": "gaal (this code)",
        "official": "gaal, official step pattern",
    }
    for name, seconds in results.items():
        print(f"{labels[name]:<28}{seconds:>10.4f}{seconds / base:>10.2f}")


if __name__ == "__main__":
    main()
