"""`plan_inventory(inventory) -> Plan`: compile an inventory, solve it, and annotate the plan.

The annotations make a plan self-contained for materialisation: the model's shape, the counts
(heads, MLP units, channels) and parameters of every sub-model, class names and device kinds.
"""

from __future__ import annotations

from pathlib import Path

from planner.cpsat_model import SolverConfig
from planner.inventory import CompiledInventory, Inventory, compile_inventory, load_inventory
from planner.plan_schema import ModelInfo, Plan
from planner.solve import solve


def compile_inventory_file(path: str | Path, *, profile_path: str | Path | None = None
                           ) -> CompiledInventory:
    path = Path(path)
    return compile_inventory(load_inventory(path), source=str(path), base_dir=path.parent,
                             profile_path=profile_path)


def plan_inventory(inventory: Inventory | str | Path, *, profile_path: str | Path | None = None,
                   config: SolverConfig | None = None) -> Plan:
    """Solve an inventory (object or YAML path); solver settings default to the inventory's."""
    if isinstance(inventory, Inventory):
        compiled = compile_inventory(inventory, profile_path=profile_path)
    else:
        compiled = compile_inventory_file(inventory, profile_path=profile_path)
    return plan_compiled(compiled, config)


def plan_compiled(compiled: CompiledInventory, config: SolverConfig | None = None) -> Plan:
    plan = solve(compiled.problem, config or compiled.inventory.solver)
    return annotate_plan(plan, compiled)


def annotate_plan(plan: Plan, compiled: CompiledInventory) -> Plan:
    names = compiled.class_names
    submodels = []
    for sm in plan.submodels:
        variant = compiled.profile.variant(sm.ratio)
        submodels.append(sm.model_copy(update={
            "device_kind": compiled.device_kinds.get(sm.device),
            "counts": variant.counts,
            "params": variant.params,
            "class_names": [names[c] for c in sm.classes] if names else None,
        }))
    shape = compiled.profile.shape.model_copy(
        update={"num_classes": compiled.problem.num_classes})
    return plan.model_copy(update={
        "submodels": submodels,
        "model": ModelInfo(shape=shape, profile_source=compiled.profile_source,
                           class_names=names),
    })
