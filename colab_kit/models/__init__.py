"""The models, each declared in its own file (a :class:`colab_kit.registry.Model` named ``SPEC``) and
listed in :mod:`colab_kit.registry`. ``build_model(name, ...)`` returns its adapter: one interface for
the trainer (predict the target in its units from a collated batch, move a batch to a device, read its
targets and size), so the trainer never branches on the model.
"""

from __future__ import annotations

from typing import Any, Mapping

from colab_kit import registry
from colab_kit.models.chgnet import CHGNetRegressor

__all__ = ["CHGNetRegressor", "build_model"]  # the frozen-head mode reads CHGNet's features


def build_model(name: str, target_mean: float = 0.0, target_std: float = 1.0,
                graph_params: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None,
                potential: str | None = None, **kwargs: Any) -> Any:
    """The adapter of model ``name``, its output normalised by the training targets' ``target_mean``/``target_std``.

    Args:
        graph_params: the store's graph parameters (a model takes what fixes its input, e.g. the cutoff, Å).
        potential: the targets of an interatomic potential (``"efs"``: energy, forces, stress; ``m``: magnetic
            moments), from the store's label spec; None for one number per structure.
        options: the model's options (``Plan.model_options``); ``**kwargs`` are merged into them.

    Raises:
        RegistryError: an unknown model, an unknown option or a bad option value.
    """
    spec = registry.model(name)
    opts = {**(options or {}), **kwargs}
    for key, value in opts.items():
        if key not in spec.options:
            raise registry.RegistryError(
                f"model {name} has no option {key!r}; its options: {', '.join(spec.options) or 'none'}")
        spec.options[key].validate(name, key, value)
    if potential is not None:
        builder = getattr(spec, "potential_builder", None)
        if builder is None:
            raise registry.RegistryError(f"model {name} predicts one number per structure, not energies and forces; "
                                         f"train a potential with --model one of {registry.potential_models()}")
        full = {k: o.default for k, o in spec.options.items()}
        full.update(opts)
        return builder(targets=potential, graph_params=dict(graph_params or {}), **full)
    return spec.build(target_mean, target_std, graph_params or {}, opts)
