"""Does MFH's overlap tag keep the teacher's informative channels? (issue 18's check)

    python tools/mfh_channels.py RUN_FOLDER [--draws 20] [--pairs]

RUN_FOLDER is a finished `mfh` run. On its validation split, the teacher's accuracy (the joint
copy trained with the reference when the run has one, else the teacher run) when only a
quarter of its feature channels vary (the rest frozen at their batch mean, as MFH distils it):
the channels MFH keeps (highest tags), the same number drawn at random (mean over draws), and
the lowest-tagged ones. A tag that ranks modality-general decisive channels first gives
kept >= random >= lowest; the inverted ranking issue 18 measured gave kept < random.

That reading holds where the modality-general channels are the class-decisive ones. On the
embedded set's complementary regime they are not: both modalities know the pair of classes
(c // 2) and the table alone decides within half the pairs (gaal_cli/data/synthetic.py), so
MFH should keep the channels that tell the pair and freeze the table-specific ones, which
lowers the teacher's class accuracy. `--pairs` also prints the accuracy on the pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.methods.mfh import features_as_input, freeze_channels
from gaal_cli.training.trained_run import load_dependencies


def teacher_accuracy(teacher, batches, keep: torch.Tensor, pairs: bool = False) -> float:
    """Validation accuracy of the teacher with only `keep`'s channels varying within each batch
    (on the class, or with `pairs` on the pair of classes c // 2)."""
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            features = teacher.encoders.tabular(batch.tabular)
            with features_as_input(teacher):
                logits = teacher.predict(None, freeze_channels(features, keep)).tabular
            predicted, label = logits.argmax(1), batch.label
            if pairs:
                predicted, label = predicted // 2, label // 2
            correct += int((predicted == label).sum())
            total += len(batch.label)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--pairs", action="store_true", help="also the accuracy on the class pair c // 2")
    args = parser.parse_args()
    config = load_config(args.run / "config.yaml")
    data = build_data(config.data, config.seed)
    teacher = load_dependencies(config, data, torch.device("cpu"))["methods.mfh.teacher"].model
    state = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    joint = {k[len("joint_teacher.") :]: v for k, v in state.items() if k.startswith("joint_teacher.")}
    if joint:  # RAVDESS's path: the teacher tagged and distilled is the copy trained with the reference
        teacher.load_state_dict(joint)
    tag, kept = state["overlap_tag"], state["keep"]
    batches = list(make_loader(data.val, config.data.eval_batch_size, shuffle=False, seed=0))
    n = int(kept.sum())
    lowest = torch.zeros_like(kept)
    lowest[torch.argsort(tag, stable=True)[:n]] = True
    generator = torch.Generator().manual_seed(0)
    draws = []
    for _ in range(args.draws):
        chosen = torch.zeros_like(kept)
        chosen[torch.randperm(len(kept), generator=generator)[:n]] = True
        draws.append(chosen)
    everything = torch.ones_like(kept)
    for pairs in (False, True) if args.pairs else (False,):
        on = "pair (c // 2)" if pairs else "class"
        random = sum(teacher_accuracy(teacher, batches, chosen, pairs) for chosen in draws) / len(draws)
        every = teacher_accuracy(teacher, batches, everything, pairs)
        print(f"teacher val accuracy on the {on}, all channels: {every:.3f}")
        highest = teacher_accuracy(teacher, batches, kept, pairs)
        print(f"{n} of {len(kept)} channels varying: kept (highest tags) {highest:.3f}")
        print(f"  random (mean of {args.draws}) {random:.3f}")
        print(f"  lowest tags {teacher_accuracy(teacher, batches, lowest, pairs):.3f}")


if __name__ == "__main__":
    main()
