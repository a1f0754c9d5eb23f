"""Model registry: ``build_model(name, ...)`` returns an adapter with one interface for the trainer.

Every adapter predicts the target in its own units from a collated batch, and knows how to move a
batch to a device and read its targets and size; the trainer never branches on the model.
"""

from __future__ import annotations

from typing import Any

MODELS = ("chgnet", "cgcnn")


def build_model(name: str, target_mean: float = 0.0, target_std: float = 1.0,
                graph_params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """The model ``name`` (``chgnet``: pretrained CHGNet fine-tuned on a scalar; ``cgcnn``: CGCNN in PyG).

    Args:
        target_mean, target_std: training-target statistics for the output normalisation.
        graph_params: the store's converter parameters (a model takes what fixes its input, e.g. the cutoff, Å).
        **kwargs: model options (e.g. ``freeze_layers`` for chgnet, ``hidden`` for cgcnn).
    """
    graph_params = graph_params or {}
    if name == "chgnet":
        from colab_kit.models.chgnet import CHGNetRegressor

        return CHGNetRegressor(target_mean=target_mean, target_std=target_std, **kwargs)
    if name == "cgcnn":
        from colab_kit.models.cgcnn import CGCNN

        kwargs.setdefault("cutoff", float(graph_params.get("cutoff", 8.0)))
        return CGCNN(target_mean=target_mean, target_std=target_std, **kwargs)
    from colab_kit.plan import PlanError

    raise PlanError(f"model must be one of {MODELS} (got {name!r})")
