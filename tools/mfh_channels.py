"""Does MFH's overlap tag keep the teacher's informative channels? (issue 18's check)

    python tools/mfh_channels.py RUN_FOLDER [--draws 20]

RUN_FOLDER is a finished `mfh` run. On its validation split, the teacher's accuracy when only a
quarter of its feature channels vary (the rest frozen at their batch mean, as MFH distils it):
the channels MFH keeps (highest tags), the same number drawn at random (mean over draws), and
the lowest-tagged ones. A tag that ranks modality-general decisive channels first gives
kept >= random >= lowest; the inverted ranking issue 18 measured gave kept < random.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaal_cli.config import load_config
from gaal_cli.data import build_data, make_loader
from gaal_cli.dependencies import load_dependencies
from gaal_cli.methods.mfh import features_as_input, freeze_channels


def teacher_accuracy(teacher, batches, keep: torch.Tensor) -> float:
    """Validation accuracy of the teacher with only `keep`'s channels varying within each batch."""
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            features = teacher.encoders.tabular(batch.tabular)
            with features_as_input(teacher):
                logits = teacher.predict(None, freeze_channels(features, keep)).tabular
            correct += int((logits.argmax(1) == batch.label).sum())
            total += len(batch.label)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args()
    config = load_config(args.run / "config.yaml")
    data = build_data(config.data, config.seed)
    teacher = load_dependencies(config, data, torch.device("cpu"))["methods.mfh.teacher"].model
    state = torch.load(args.run / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    tag, kept = state["overlap_tag"], state["keep"]
    batches = list(make_loader(data.val, config.data.eval_batch_size, shuffle=False, seed=0))
    n = int(kept.sum())
    lowest = torch.zeros_like(kept)
    lowest[torch.argsort(tag, stable=True)[:n]] = True
    generator = torch.Generator().manual_seed(0)
    random = []
    for _ in range(args.draws):
        chosen = torch.zeros_like(kept)
        chosen[torch.randperm(len(kept), generator=generator)[:n]] = True
        random.append(teacher_accuracy(teacher, batches, chosen))
    everything = torch.ones_like(kept)
    print(f"teacher val accuracy, all channels: {teacher_accuracy(teacher, batches, everything):.3f}")
    print(f"{n} of {len(kept)} channels varying: kept (highest tags) {teacher_accuracy(teacher, batches, kept):.3f}")
    print(f"  random (mean of {args.draws}) {sum(random) / len(random):.3f}")
    print(f"  lowest tags {teacher_accuracy(teacher, batches, lowest):.3f}")


if __name__ == "__main__":
    main()
