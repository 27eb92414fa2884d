"""The planner inside another framework: build a problem in code, solve it, re-plan when a device
leaves.

A framework that already knows its devices (here a list of dicts, as it might keep them) and the
costs of the model's pruned variants (here edvit's built-in ViT-S/16 profile) builds a
`planner.Problem` directly, without inventory files, solves it under a time limit, reads the
placements and the solver's proof, and plans again for the fleet that is left when a device drops
out. Only `planner` is imported: no torch.

    python examples/embed_planner.py
"""

from __future__ import annotations

import planner
from planner.inventory import fusion_cost
from planner.loss_rule import default_loss_steps
from planner.problem import Device, ProfileRow
from planner.profiles import builtin_profile

NUM_CLASSES = 10
FUSION_HIDDEN = 256

# The framework's own view of its fleet (figures as `edvit devices` lists them).
FLEET = [
    {"id": "cam-a", "mem_bytes": 3_500_000_000, "flops_per_s": 8.0e9, "overhead_s": 0.012,
     "link_bytes_per_s": 1.25e7},
    {"id": "cam-b", "mem_bytes": 3_500_000_000, "flops_per_s": 8.0e9, "overhead_s": 0.012,
     "link_bytes_per_s": 1.25e7},
    {"id": "cam-c", "mem_bytes": 1_500_000_000, "flops_per_s": 6.0e9, "overhead_s": 0.015,
     "link_bytes_per_s": 1.25e7},
    {"id": "hub", "mem_bytes": 7_500_000_000, "flops_per_s": 1.2e10, "overhead_s": 0.008,
     "link_bytes_per_s": 1.25e8},
]


def build_problem(fleet: list[dict], name: str) -> planner.Problem:
    """A planning problem for `fleet`: one profile row per keep ratio of the built-in profile."""
    profile = builtin_profile("vit_small_patch16_224")
    rows = [ProfileRow(ratio=v.ratio, flops=v.flops, mem_bytes=v.mem_bytes,
                       feat_bytes=v.feat_bytes, param_bytes=v.param_bytes,
                       loss_steps=default_loss_steps(v.ratio, NUM_CLASSES))
            for v in profile.variants]
    devices = [Device(name=d["id"], mem_bytes=d["mem_bytes"], flops_per_s=d["flops_per_s"],
                      overhead_s=d["overhead_s"], link_bytes_per_s=d["link_bytes_per_s"])
               for d in fleet]
    fusion = fusion_cost(profile.shape.embed_dim, FUSION_HIDDEN, NUM_CLASSES, len(devices))
    return planner.Problem(name=name, num_classes=NUM_CLASSES, fusion=fusion, profile=rows,
                           devices=devices, loss_budget=1.0, secondary="memory")


def plan_fleet(fleet: list[dict], name: str) -> planner.Plan:
    """Solve with an explicit time limit, seed and one worker (deterministic plans)."""
    config = planner.SolverConfig(time_limit_s=10, seed=0, workers=1)
    return planner.solve(build_problem(fleet, name), config)


def describe(plan: planner.Plan) -> list[str]:
    """The placements and the proof, as a framework would log them."""
    proof = plan.solver
    lines = [f"{plan.name}: {plan.status}, makespan {plan.makespan_s * 1e3:.1f} ms "
             f"(bound {proof.bound_s * 1e3:.1f} ms, gap {proof.gap:.1%}, "
             f"{proof.wall_time_s:.2f} s)"]
    lines += [f"  {s.device:<6} ratio {s.ratio:<5g} classes {s.classes}" for s in plan.submodels]
    lines.append(f"  fusion on {plan.fusion.device}")
    return lines


def main() -> tuple[planner.Plan, planner.Plan]:
    before = plan_fleet(FLEET, "full-fleet")
    print("\n".join(describe(before)))
    # A device leaves: plan again for the fleet that is left.
    gone = before.submodels[0].device
    after = plan_fleet([d for d in FLEET if d["id"] != gone], f"without-{gone}")
    print("\n".join(describe(after)))
    return before, after


if __name__ == "__main__":
    main()
