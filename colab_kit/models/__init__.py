"""Model registry: ``build_model(name, ...)`` returns an adapter with one interface for the trainer.

Every adapter predicts the target in its own units from a collated batch, and knows how to move a
batch to a device and read its targets and size; the trainer never branches on the model.
"""

from __future__ import annotations

from typing import Any

MODELS = ("chgnet", "cgcnn")


def build_model(name: str, target_mean: float = 0.0, target_std: float = 1.0, **kwargs: Any) -> Any:
    """The model ``name`` (``chgnet``: pretrained CHGNet fine-tuned on a scalar; ``cgcnn``: CGCNN in PyG).

    Args:
        target_mean, target_std: training-target statistics for the output normalisation.
        **kwargs: model options (e.g. ``freeze_layers`` for chgnet, ``hidden`` for cgcnn).
    """
    if name == "chgnet":
        from colab_kit.models.chgnet import CHGNetRegressor

        return CHGNetRegressor(target_mean=target_mean, target_std=target_std, **kwargs)
    if name == "cgcnn":
        from colab_kit.models.cgcnn import CGCNN

        return CGCNN(target_mean=target_mean, target_std=target_std, **kwargs)
    raise ValueError(f"model must be one of {MODELS} (got {name!r})")
