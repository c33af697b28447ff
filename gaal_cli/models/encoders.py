"""Encoders shared by every method: a timm image backbone and a tabular MLP.

Both map their input to a `feature_dim`-wide vector, so a method can put one classifier on
either modality (GAAL's shared head) or concatenate them (joint training).
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from torch import nn

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.untrusted import check_tensors, read_bytes


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

    def __init__(
        self,
        backbone: str,
        feature_dim: int,
        pretrained: bool = False,
        weights: str | None = None,
        weights_prefix: str = "",
        weights_min_match: float = 1.0,
    ):
        super().__init__()
        self.backbone, self.weights_record = create_backbone(
            backbone, pretrained, weights, weights_prefix, weights_min_match
        )
        width = self.backbone.num_features
        self.project = nn.Identity() if width == feature_dim else nn.Linear(width, feature_dim)
        self.out_dim = feature_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.project(self.backbone(image))


#: where a gaal checkpoint keeps the image backbone's weights
GAAL_BACKBONE_PREFIX = "encoders.image.backbone."
#: a weights file is read whole into memory once (hashed, then loaded from those bytes)
WEIGHTS_MAX_BYTES = 4_000_000_000
#: wrappers that training scripts put around a state dict, and the prefixes of wrapped modules
#: (DDP, torch.compile) that timm strips too; any other prefix is the user's to name
STATE_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def create_backbone(
    name: str, pretrained: bool, weights: str | None, prefix: str = "", min_match: float = 1.0
) -> tuple[nn.Module, dict[str, Any] | None]:
    """A headless, pooled timm model, with weights from a local file, timm's hub, or random.

    Returns:
        The model, and for a weights file what `weights_record` says (else None).
    """
    # a name may carry timm's weight tag (resnet50.tv_in1k: torchvision's ImageNet weights)
    if name.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise GaalError(f"'{name}' is not a timm model{hint}", field="model.image_backbone")
    if weights:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        path = Path(weights)
        data = read_bytes(path, WEIGHTS_MAX_BYTES, field="model.weights")
        state = weights_state(data, path)
        matched = load_strictly(model, state, path, prefix, min_match)
        return model, {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "matched": matched}
    if pretrained:
        return hub_backbone(name), None
    return timm.create_model(name, pretrained=False, num_classes=0), None


def weights_state(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file's bytes: safetensors, or a torch file read with
    weights_only=True (a pickle that builds objects is refused); a gaal checkpoint gives its
    image backbone, a training checkpoint its `state_dict` (or EMA) entry.

    Raises:
        GaalError: not a state dict of finite tensors.
    """
    where = {"source": str(path), "field": "model.weights"}
    try:
        if path.suffix == ".safetensors":
            state = safetensors.torch.load(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise many types for a foreign or code-carrying file
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise GaalError(f"cannot be read as tensors and plain data ({reason})", **where) from None
    if isinstance(state, dict) and {"model", "config"} <= state.keys() and isinstance(state["model"], dict):
        prefix = GAAL_BACKBONE_PREFIX
        state = {k[len(prefix) :]: v for k, v in state["model"].items() if str(k).startswith(prefix)}
        if not state:
            raise GaalError("this gaal checkpoint holds no image backbone", **where)
    elif isinstance(state, dict):
        key = next((k for k in STATE_KEYS if isinstance(state.get(k), dict)), None)
        state = state[key] if key else state
    if not isinstance(state, dict):
        raise GaalError(f"expected a state dict (names to tensors), got {type(state).__name__}", **where)
    cleaned = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        cleaned[key] = value
    check_tensors(cleaned, path, "model.weights")
    return cleaned


def load_strictly(model: nn.Module, state: dict[str, torch.Tensor], path: Path, prefix: str, min_match: float) -> str:
    """Load `state` into `model`, refusing a file that does not fit it.

    Every tensor of the model (buffers such as BatchNorm's batch counter aside) must be found
    under its name with its shape, and every tensor of the file must be used, the classifier
    timm removes aside; `min_match` below 1 accepts a file covering that fraction of the model.
    `prefix` (model.weights_prefix) is removed from the file's names first, and names without
    it are left out. timm's own conversion of the model family (`checkpoint_filter_fn`, e.g.
    torchvision or original ViT weights) is applied when it has one.

    Returns:
        What matched, for the run's record ("161 of 161 tensors").

    Raises:
        GaalError: names the file, what matched and, for names under one prefix, the setting to use.
    """
    where = {"source": str(path), "field": "model.weights"}
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = _timm_converted(model, state)
    wanted = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    matched = [k for k, v in wanted.items() if k in state and tuple(state[k].shape) == tuple(v.shape)]
    head = _classifier_names(model)
    unused = [
        k for k in state if k not in wanted and not k.endswith("num_batches_tracked") and k.split(".")[0] not in head
    ]
    wrong_shape = [k for k in wanted if k in state and k not in matched]
    fraction = len(matched) / max(len(wanted), 1)
    if fraction < min_match or (min_match >= 1.0 and unused):
        found = f"{len(matched)} of the model's {len(wanted)} tensors match by name and shape"
        details = []
        if wrong_shape:
            details.append(f"{len(wrong_shape)} differ in shape (first: {wrong_shape[0]})")
        if unused:
            details.append(f"{len(unused)} of the file's names fit no tensor (first: {unused[0]})")
        hint = _prefix_hint(state, wanted) if not matched else ""
        more = f" ({'; '.join(details)})" if details else ""
        setting = "" if hint else (
            "; set model.weights_min_match to the fraction to accept to load a partial file" if matched else ""
        )
        name = model.default_cfg.get("architecture", "")
        raise GaalError(f"does not fit '{name}': {found}{more}{hint}{setting}", **where)
    model.load_state_dict({k: state[k] for k in matched}, strict=False)
    return f"{len(matched)} of {len(wanted)} tensors"


def _timm_converted(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return dict(convert(dict(state), model))
    except Exception:  # a file the conversion does not know: matched as it is
        return state


def _classifier_names(model: nn.Module) -> set[str]:
    """First name parts of the classifier a published weights file carries (removed here: num_classes=0)."""
    names = model.default_cfg.get("classifier", ()) if hasattr(model, "default_cfg") else ()
    names = (names,) if isinstance(names, str) else tuple(names or ())
    return {str(n).split(".")[0] for n in names} | {"fc", "head", "classifier"}


def _prefix_hint(state: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> str:
    """'; its names start with 'backbone.' ...' when removing one leading part makes them match."""
    starts = {k.split(".", 1)[0] + "." for k in state if "." in k}
    for start in sorted(starts):
        stripped = {k[len(start) :] for k in state if k.startswith(start)}
        hits = len(stripped & wanted.keys())
        if hits:
            return (
                f"; {hits} match once the prefix '{start}' is removed from the file's names: set "
                f"model.weights_prefix={start} to load those"
            )
    return ""


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
    weights_prefix: str = "",
    weights_min_match: float = 1.0,
    dropout: float = 0.0,
) -> Encoders:
    image = ImageEncoder(image_backbone, feature_dim, pretrained, weights, weights_prefix, weights_min_match)
    return Encoders(
        image,
        TabularEncoder(field_lengths, tabular_hidden, feature_dim, dropout=dropout),
    )
