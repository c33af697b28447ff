"""Encoders shared by every method: a timm image backbone and a tabular MLP.

Both map their input to a `feature_dim`-wide vector, so a method can put one classifier on
either modality (GAAL's shared head) or concatenate them (joint training).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from torch import nn

from gaal_cli.errors import GaalError


class ImageEncoder(nn.Module):
    """A timm backbone (global-pooled) followed by a projection when its width differs.

    Args:
        backbone: any timm model name, e.g. `resnet50` (paper) or `test_resnet` (CPU default),
            optionally with a weight tag for `pretrained` (`resnet50.tv_in1k`).
        feature_dim: output width.
        pretrained: start from timm's published weights (downloaded from its hub, or found in
            the local Hugging Face cache); ignored when `weights` is given.
        weights: a local weights file: a timm/torchvision state dict (.pth, .bin or
            .safetensors) or a gaal checkpoint (its image backbone is taken).
    """

    def __init__(self, backbone: str, feature_dim: int, pretrained: bool = False, weights: str | None = None):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, weights)
        width = self.backbone.num_features
        self.project = nn.Identity() if width == feature_dim else nn.Linear(width, feature_dim)
        self.out_dim = feature_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone(image))


#: where a gaal checkpoint keeps the image backbone's weights
GAAL_BACKBONE_PREFIX = "encoders.image.backbone."


def create_backbone(name: str, pretrained: bool, weights: str | None) -> nn.Module:
    """A headless, pooled timm model, with weights from a local file, timm's hub, or random."""
    # a name may carry timm's weight tag (resnet50.tv_in1k: torchvision's ImageNet weights)
    if name.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise GaalError(f"'{name}' is not a timm model{hint}", field="model.image_backbone")
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise GaalError("no such weights file", source=str(path), field="model.weights")
        gaal_state = gaal_backbone_state(path)
        if gaal_state is None:
            try:  # timm reads the file with weights_only=True: a pickle that builds objects is refused
                return timm.create_model(
                    name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)}
                )
            except (RuntimeError, ValueError, EOFError, KeyError, pickle.UnpicklingError) as err:
                reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
                raise GaalError(
                    f"cannot load these weights into '{name}' (a state dict of tensors is expected): {reason}",
                    source=str(path),
                    field="model.weights",
                ) from None
        model = timm.create_model(name, pretrained=False, num_classes=0)
        try:
            model.load_state_dict(gaal_state)
        except RuntimeError as err:
            raise GaalError(
                f"the gaal checkpoint's image backbone is not a '{name}' ({str(err).splitlines()[0]})",
                source=str(path),
                field="model.weights",
            ) from None
        return model
    if pretrained:
        return hub_backbone(name)
    return timm.create_model(name, pretrained=False, num_classes=0)


def gaal_backbone_state(path: Path) -> dict[str, torch.Tensor] | None:
    """The image backbone of a gaal checkpoint (read with weights_only=True), or None when the
    file is not one (then it is left to timm as a plain state dict)."""
    if path.suffix == ".safetensors":
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a plain torch file: timm reads it, or reports why it cannot
        return None
    if not (isinstance(state, dict) and {"model", "config"} <= state.keys()):
        return None
    found = {k[len(GAAL_BACKBONE_PREFIX) :]: v for k, v in state["model"].items() if k.startswith(GAAL_BACKBONE_PREFIX)}
    if not found:
        raise GaalError("this gaal checkpoint holds no image backbone", source=str(path), field="model.weights")
    return found


def hub_backbone(name: str) -> nn.Module:
    """timm's published weights for `name`, from the local cache or its hub.

    Raises:
        GaalError: no published weights for that name, or the hub cannot be reached and the
            weights are not cached (offline host).
    """
    try:
        return timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as err:  # hub/network errors are OSErrors
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GaalError(
            f"cannot get timm's pretrained weights for '{name}' ({type(err).__name__}: {first}). On a host "
            "without internet access, download them elsewhere and set model.weights=PATH to the file",
            field="model.pretrained",
        ) from None


class TabularEncoder(nn.Module):
    """MLP over continuous values and one-hot categorical codes (MMCL field lengths).

    Args:
        field_lengths: 1 per continuous column, number of categories per categorical column.
        hidden: widths of the hidden layers.
        feature_dim: output width.
    """

    def __init__(self, field_lengths: tuple[int, ...], hidden: list[int], feature_dim: int, dropout: float = 0.0):
        super().__init__()
        self.field_lengths = tuple(field_lengths)
        self.register_buffer("_categorical", torch.tensor([k > 1 for k in field_lengths]), persistent=False)
        layers: list[nn.Module] = []
        width = sum(field_lengths)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, feature_dim))
        self.mlp = nn.Sequential(*layers)
        self.out_dim = feature_dim

    def one_hot(self, table: torch.Tensor) -> torch.Tensor:
        columns = []
        for j, k in enumerate(self.field_lengths):
            col = table[:, j]
            if k == 1:
                columns.append(col[:, None])
            else:
                columns.append(nn.functional.one_hot(col.long().clamp(0, k - 1), k).to(table.dtype))
        return torch.cat(columns, dim=1)

    def forward(self, table: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.one_hot(table))


class Encoders(nn.Module):
    """The pair of encoders every method trains; `feature_dim` is their common width."""

    def __init__(self, image: ImageEncoder, tabular: TabularEncoder):
        super().__init__()
        if image.out_dim != tabular.out_dim:
            raise ValueError("encoders must share their output width")
        self.image = image
        self.tabular = tabular
        self.feature_dim = image.out_dim


def build_encoders(
    field_lengths: tuple[int, ...],
    *,
    image_backbone: str,
    feature_dim: int,
    tabular_hidden: list[int],
    pretrained: bool = False,
    weights: str | None = None,
    dropout: float = 0.0,
) -> Encoders:
    return Encoders(
        ImageEncoder(image_backbone, feature_dim, pretrained=pretrained, weights=weights),
        TabularEncoder(field_lengths, tabular_hidden, feature_dim, dropout=dropout),
    )
