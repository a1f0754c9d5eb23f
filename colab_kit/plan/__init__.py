"""Stage 1, the plan: what this machine has (:mod:`.machine`: RAM, GPU, disk, CPUs, Colab, Drive) and everything a
run will do on it (:mod:`.planner`: graph resolution, batch budget, workers, threads, places, training settings,
each with the reason it was chosen), with the settings a user may override and their checks (:mod:`.settings`).
"""

from colab_kit.plan.machine import GIB, Gpu, Machine, detect, query_gpu
from colab_kit.plan.planner import MODES, Plan, PlanError, make_plan
from colab_kit.plan.settings import (
    BAD_STRUCTURE_POLICIES,
    ISOLATED_ATOM_POLICIES,
    OVERRIDABLE,
    TASKS,
    BadStructurePolicy,
    IsolatedPolicy,
    with_current_names,
)

__all__ = ["BAD_STRUCTURE_POLICIES", "GIB", "ISOLATED_ATOM_POLICIES", "MODES", "OVERRIDABLE", "TASKS", "BadStructurePolicy",
           "Gpu", "IsolatedPolicy", "Machine", "Plan", "PlanError", "detect", "make_plan", "query_gpu",
           "with_current_names"]
