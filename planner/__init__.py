"""edvit's planner: provably optimal deployment plans for a ViT split across edge devices.

Imports no torch: other frameworks embed it as a planner.

    import planner
    plan = planner.plan_inventory("examples/pi4-cluster.yaml")     # from an inventory YAML
    plan = planner.solve(planner.load_problem("problem.yaml"))     # from a low-level problem
"""

from planner.cpsat_model import SolverConfig
from planner.errors import EdvitError, InputError, InternalError
from planner.inventory import Inventory, compile_inventory, load_inventory
from planner.plan_inventory import plan_inventory
from planner.plan_schema import Plan, load_plan
from planner.problem import Problem, load_problem
from planner.solve import solve
from planner.whatif import WhatIfResult, what_if

__all__ = ["EdvitError", "InputError", "InternalError", "Inventory", "Plan", "Problem", "SolverConfig",
           "WhatIfResult", "compile_inventory", "load_inventory", "load_plan", "load_problem",
           "plan_inventory", "solve", "what_if"]
