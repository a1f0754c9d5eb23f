"""The Plan settings a user may override (``--set key=value``, the panel), each with the check its value must
pass and the words that say what it must be."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, get_args

from colab_kit import registry

AMP_CHOICES = ("off", "fp16", "bf16")
BadStructurePolicy = Literal["skip", "warn", "error"]  # what a conversion does with a structure it cannot convert
BAD_STRUCTURE_POLICIES: tuple[str, ...] = get_args(BadStructurePolicy)
SCHEDULES = ("cosine", "warmup_cosine")  # per epoch, see colab_kit.training.schedule.lr_factor
IsolatedPolicy = Literal["error", "warn", "ignore"]  # CHGNet's CrystalGraphConverter modes, same names and meaning
ISOLATED_ATOM_POLICIES: tuple[str, ...] = get_args(IsolatedPolicy)
SPLITS = ("random", "matbench")
TASKS = ("property", "potential")  # one label per structure, or an interatomic potential (energies, forces, ...)  # 80/10/10 by seed, or matbench's official fold + a seeded validation part


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _within(check: Any, high: float) -> Any:
    """``check``, and at most ``high``: sizes have a sane range (a cutoff of 1e5 Å, accepted, ended in 22 GB)."""
    return lambda v: check(v) and v <= high


MAX_CUTOFF = 20.0  # Å: CHGNet uses 6, CGCNN 8; at 20 Å an atom has thousands of neighbours
MIN_GPU_MEMORY = 256 * 2**20  # a GPU memory ceiling below this leaves no room for CUDA's own context and one batch

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value: Any) -> int | None:
    """Bytes from a number of bytes or a size such as ``"15GiB"``, ``"16000 MiB"``, ``"15GB"`` (GB = 10^9, GiB =
    2^30); None when ``value`` is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", value)
    if m is None or m.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _gpu_memory(v: Any) -> bool:
    n = parse_size(v)
    return v is None or (n is not None and MIN_GPU_MEMORY <= n <= 2**44)


# Fields a user may override, with the check each value must pass.
OVERRIDABLE: dict[str, tuple[Any, str]] = {
    "data": (lambda v: isinstance(v, str) and v != "", "a path, URL, Google Drive id/link or known dataset name"),
    "data_sha256": (lambda v: v is None or (isinstance(v, str) and re.fullmatch(r"[0-9a-fA-F]{64}", v) is not None),
                    "the downloaded file's sha256, 64 hex digits, or None"),
    "target": (lambda v: v is None or (isinstance(v, str) and v != ""), "a column/key name of the label or None"),
    "unit": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "the label's unit, e.g. eV/atom, or None"),
    "graph_kind": (lambda v: v in registry.graph_kinds(), "a registered graph kind"),
    "model": (lambda v: v in registry.models(), "a registered model"),
    "cutoff": (_within(_positive_num, MAX_CUTOFF), f"a number of Å in (0, {MAX_CUTOFF:g}]: a crystal graph's cutoff "
               "is a few Å (CHGNet 6, CGCNN 8), and larger ones give graphs of thousands of neighbours per atom"),
    "bond_cutoff": (_within(_positive_num, MAX_CUTOFF), f"a number of Å in (0, {MAX_CUTOFF:g}]"),
    "max_neighbors": (lambda v: v is None or _within(_positive_int, 1000)(v), "an integer from 1 to 1000, or None"),
    "on_isolated_atoms": (lambda v: v in ISOLATED_ATOM_POLICIES, f"one of {ISOLATED_ATOM_POLICIES}"),
    "graph_edges": (lambda v: v in ("stored", "device"), "stored or device"),
    "train_memory": (_within(_positive_int, 2**41), "a positive number of bytes, at most 2 TiB"),
    "gpu_memory": (_gpu_memory, "a size such as 15GiB, 16000MiB or 15GB (or a number of bytes), at least 256MiB: the "
                   "GPU memory this process may use and plans for (15GiB: a Colab T4); None for the whole GPU"),
    "batch_edges": (_within(_positive_int, 10**9), "a positive integer, at most 1e9"),
    "batch_atoms": (_within(_positive_int, 10**8), "a positive integer, at most 1e8"),
    "calibrate": (lambda v: isinstance(v, bool), "true or false"),
    "budget_cap": (lambda v: _positive_num(v) and v >= 1, "a number >= 1"),
    "batch_size": (_within(_positive_int, 10**6), "a positive integer, at most 1e6"),
    "eval_batch_size": (_within(_positive_int, 10**6), "a positive integer, at most 1e6"),
    "workers": (_nonneg_int, "an integer >= 0"),
    "threads": (_positive_int, "a positive integer (torch's intra-op threads)"),
    "convert_workers": (_within(_positive_int, 256), "an integer from 1 to 256"),
    "shard_size": (_within(_positive_int, 100_000), "an integer from 1 to 100,000 (structures per shard file)"),
    "on_bad_structure": (lambda v: v in BAD_STRUCTURE_POLICIES, f"one of {BAD_STRUCTURE_POLICIES}"),
    "work_dir": (lambda v: isinstance(v, str) and v != "", "a directory path"),
    "persist_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "a directory path or None"),
    "device": (lambda v: isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda"), "'cpu' or 'cuda[:N]'"),
    "amp": (lambda v: v in AMP_CHOICES, f"one of {AMP_CHOICES}"),
    "n_samples": (lambda v: v is None or _positive_int(v), "a positive integer or None (all)"),
    "epochs": (_within(_positive_int, 100_000), "an integer from 1 to 100,000"),
    "patience": (_positive_int, "a positive integer"),
    "lr": (_positive_num, "a positive number"),
    "lr_min": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {SCHEDULES}"),
    "weight_decay": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
    "grad_clip": (_positive_num, "a positive number (max gradient norm)"),
    "seed": (_nonneg_int, "an integer >= 0"),
    "checkpoint_minutes": (_within(_positive_num, 1440), "a number of minutes in (0, 1440]"),
    "split": (lambda v: v in SPLITS, f"one of {SPLITS}"),
    "fold": (lambda v: v is None or (_nonneg_int(v) and v < 5), "a matbench fold 0..4, or None"),
    "teacher": (lambda v: v is None or (isinstance(v, str) and v != ""), "a trained model's run or export directory, or None"),
    "distill_alpha": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1,
                      "a number from 0 (teacher only) to 1 (labels only)"),
    "task": (lambda v: v in TASKS, f"one of {TASKS}"),
    "potential_targets": (lambda v: v in ("auto", "ef", "efs", "efm", "efsm"),
                          "auto, or ef / efs / efm / efsm (energy, forces, stress, magnetic moments)"),
    **{k: (lambda v: v is None or (isinstance(v, str) and v != ""), "a key name in the frames, or None (the format's)")
       for k in ("energy_key", "forces_key", "stress_key", "magmoms_key")},
    "energy_is": (lambda v: v in (None, "total", "per_atom"), "total or per_atom (None: the format's)"),
    "stress_unit": (lambda v: v in (None, "eV/A3", "GPa", "kbar"), "eV/A3, GPa or kbar (None: the format's)"),
    "stress_sign": (lambda v: v in (None, "tensile", "compressive"),
                    "tensile (ASE: a stretched cell's stress is positive) or compressive (VASP); None: the format's"),
    **{k: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0")
       for k in ("energy_weight", "force_weight", "stress_weight", "magmom_weight")},
    "loss": (lambda v: v in ("mse", "huber"), "mse or huber"),
    "huber_delta": (_positive_num, "a positive number"),
}


#: Other names a setting is known by (``--set target_column=...`` is ``--set target=...``).
ALIASES: dict[str, str] = {"target_column": "target", "converter": "graph_kind"}


def with_current_names(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` (overrides, or a Plan saved by an older version) with each alias replaced by its setting's name."""
    return {ALIASES.get(k, k): v for k, v in settings.items()}
