"""Measured accuracy-loss step tables for the planner (`edvit profile-accuracy`).

The planner charges a sub-model that serves g of C classes at keep ratio r with a loss L(r, g) in
accuracy points, read from the variant's step table `[[g_max, loss_pp], ...]` (the default rule of
`planner.loss_rule` when the profile has none). This module measures that table with exactly the
machinery `edvit materialize` uses (`vit_ops.materialize.build_one_submodel`: class-wise importance,
`apply_prune_spec` to `counts_for_ratio(shape, r)`, head over the classes + "other", fine-tuning with
distillation), on a coarse grid: for every ratio of the profile and every group size g of the grid,
a few class groups of size g are sampled (seeded; the same groups for every ratio, so ratios are
compared on the same classes) and a sub-model is built for each.

Accuracy is measured on the validation split (never the test split, which `edvit evaluate` reports),
on the images of the group's classes, over the group's classes + "other", as `edvit evaluate` scores
a sub-model. The base model is scored the same way: its softmax collapsed to the group's classes +
"other" (`vit_ops.importance.group_log_probs`), argmax against the same labels. A group's loss is
max(0, base - sub) in percentage points; a cell's loss (r, g) is the mean over its sampled groups.

Input: a `LoadedBase`, `DataSplits`, a `ModelProfile` of the base's architecture. Output: an
`AccuracyTable` holding the profile with every variant's `loss_steps` set and the measurements.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import torch
from pydantic import Field

from planner.errors import InputError
from planner.profile_schema import ModelProfile
from planner.progress import ProgressCallback, phase_progress
from planner.schema_base import StrictModel
from planner.vit_shape import ViTShape, check_same_shape, counts_for_ratio
from vit_ops.base_model import LoadedBase
from vit_ops.data import DataSplits
from vit_ops.importance import group_log_probs
from vit_ops.materialize import MaterializeConfig, build_one_submodel
from vit_ops.submodel import group_labels
from vit_ops.compute import CPU, Compute
from vit_ops.training import accuracy, predict_set

log = logging.getLogger(__name__)

LOSS_DECIMALS = 2


class AccuracyTableConfig(StrictModel):
    """The grid and how its sub-models are made (materialisation settings, ONNX export off)."""

    group_sizes: list[int] | None = Field(
        default=None, description="class-group sizes to measure; None: default_group_sizes(C)")
    groups_per_size: int = Field(default=2, gt=0, description="class groups sampled per size")
    loss_cap_pp: float = Field(
        default=10.0, ge=0, description="a ratio's table ends before the first size whose "
                                        "(envelope) loss exceeds this many points")
    seed: int = Field(default=0, description="seed of the class-group sampling")
    materialize: MaterializeConfig = MaterializeConfig(export_onnx=False)


class GroupMeasurement(StrictModel):
    """One sub-model: accuracies (0..1) on the validation images of its classes."""

    classes: list[int]
    val_images: int
    base_accuracy: float = Field(description="base softmax collapsed to classes + other")
    sub_accuracy: float
    loss_pp: float = Field(description="max(0, base - sub) in percentage points")


class CellMeasurement(StrictModel):
    """One grid cell (ratio, group size): the mean loss over its sampled groups."""

    ratio: float
    group_size: int
    loss_pp: float = Field(description="mean of the groups' loss_pp")
    groups: list[GroupMeasurement]


class AccuracyTable(StrictModel):
    """The profile with measured `loss_steps` on every variant, and what they were made from."""

    profile: ModelProfile
    group_sizes: list[int]
    loss_cap_pp: float
    seed: int
    finetune_epochs: int
    measurements: list[CellMeasurement]

    def loss_steps_of(self, ratio: float) -> list[tuple[int, float]]:
        return list(self.profile.variant(ratio).loss_steps or [])


def default_group_sizes(num_classes: int) -> list[int]:
    """The coarse grid 1, 2, 3, 5, C/2, C, clipped to [1, C], sorted, without duplicates."""
    sizes = {1, 2, 3, 5, max(1, num_classes // 2), num_classes}
    return sorted(s for s in sizes if 1 <= s <= num_classes)


def sample_groups(num_classes: int, size: int, count: int, seed: int) -> list[list[int]]:
    """`count` distinct class groups (sorted ids) of `size` classes, drawn with `seed`; all of them
    when there are no more than `count`."""
    if math.comb(num_classes, size) <= count:
        return [list(g) for g in itertools.combinations(range(num_classes), size)]
    rng = np.random.default_rng([seed, size])
    groups: list[list[int]] = []
    while len(groups) < count:
        group = sorted(int(c) for c in rng.choice(num_classes, size=size, replace=False))
        if group not in groups:
            groups.append(group)
    return groups


def loss_steps_from_measurements(points: list[tuple[int, float]], loss_cap_pp: float
                                 ) -> list[tuple[int, float]]:
    """A valid step table `[[g_max, loss_pp], ...]` from measured (group size, loss) points.

    Monotone envelope: the loss at a measured size g is the largest loss measured at any size
    g' <= g (a larger group is never charged less than a smaller one, whatever the noise). Sizes
    between two measured ones take the larger size's loss (the planner's step semantics: the first
    step with g <= g_max), so the table never undercharges. Consecutive sizes with the same loss
    merge into one step. The table ends at the largest measured size, or before the first size whose
    envelope exceeds `loss_cap_pp` (the ratio's capacity is cut there; empty: it cannot serve even
    the smallest size). Losses are rounded to 0.01 point.
    """
    steps: list[tuple[int, float]] = []
    envelope = 0.0
    for size, loss in sorted(points):
        envelope = max(envelope, round(loss, LOSS_DECIMALS))
        if envelope > loss_cap_pp:
            break
        if steps and (steps[-1][1] == envelope or steps[-1][0] == size):
            steps[-1] = (size, envelope)
        else:
            steps.append((size, envelope))
    return steps


def check_profile_fits(profile: ModelProfile, shape: ViTShape, source: str = "profile") -> None:
    """The profile must describe the base's architecture (every ViTShape field but num_classes, as
    a profile's costs do not depend on the head) and count its variants with `counts_for_ratio`."""
    check_same_shape(profile.shape, shape, what="profile", source=source, field_prefix="shape.",
                     ignore=("num_classes",))
    for i, variant in enumerate(profile.variants):
        if variant.counts != counts_for_ratio(shape, variant.ratio):
            raise InputError("variant counts differ from counts_for_ratio (profile made by "
                             "another rule?)", file=source, field=f"variants.{i}.counts",
                             value=variant.ratio)


def check_group_sizes(sizes: list[int], num_classes: int) -> list[int]:
    """Sorted distinct sizes, each in 1..C (InputError naming --group-sizes otherwise)."""
    bad = [s for s in sizes if not 1 <= s <= num_classes]
    if bad or not sizes:
        raise InputError(f"group sizes must be in 1..{num_classes}", field="--group-sizes",
                         value=",".join(str(s) for s in sizes))
    return sorted(set(sizes))


def measure_accuracy_table(base: LoadedBase, splits: DataSplits, profile: ModelProfile,
                           config: AccuracyTableConfig = AccuracyTableConfig(),
                           progress: ProgressCallback | None = None,
                           profile_source: str = "profile", compute: Compute = CPU
                           ) -> AccuracyTable:
    """Measure L(r, g) for every ratio of `profile` and every group size of the grid.

    Builds len(ratios) x (groups per size, summed over sizes) sub-models; the cost of each is one
    `build_one_submodel` (importance + fine-tuning). Deterministic for the same inputs and seeds.
    """
    shape = base.spec.shape
    num_classes = shape.num_classes
    check_profile_fits(profile, shape, profile_source)
    if splits.num_classes != num_classes:
        raise InputError(f"data has {splits.num_classes} classes, the base model {num_classes}",
                         field="--data", value=splits.source)
    sizes = check_group_sizes(default_group_sizes(num_classes) if config.group_sizes is None
                              else config.group_sizes, num_classes)
    groups = [(size, group) for size in sizes for group in
              sample_groups(num_classes, size, config.groups_per_size, config.seed)]
    val = splits.val
    base_logits, _ = predict_set(base.model.to(compute.device), val, compute)
    base.model.cpu()
    base_scores = {tuple(g): _base_accuracy(base_logits, val.labels, g, splits.source)
                   for _, g in groups}

    ratios = sorted((v.ratio for v in profile.variants), reverse=True)
    total = len(ratios) * len(groups)
    cells: list[CellMeasurement] = []
    done = 0
    for ratio in ratios:
        counts = counts_for_ratio(shape, ratio)
        by_size: dict[int, list[GroupMeasurement]] = {}
        for index, (size, group) in enumerate(groups):
            label = f"r={ratio:g} g={size} {group}"
            sub = build_one_submodel(base, group, counts, splits, config.materialize, index,
                                     phase_progress(progress, done, total, label), compute)
            mine = val.of_classes(group)
            sub.to(compute.device)
            logits, labels = predict_set(lambda x: sub(x)[0], mine, compute)
            sub_acc = accuracy(logits, group_labels(labels, group))
            base_acc, n = base_scores[tuple(group)]
            by_size.setdefault(size, []).append(GroupMeasurement(
                classes=group, val_images=n, base_accuracy=base_acc, sub_accuracy=sub_acc,
                loss_pp=max(0.0, 100.0 * (base_acc - sub_acc))))
            done += 1
            if progress:
                progress(done * 1000, total * 1000, label)
        for size, measured in by_size.items():
            loss = sum(m.loss_pp for m in measured) / len(measured)
            cells.append(CellMeasurement(ratio=ratio, group_size=size, loss_pp=loss,
                                         groups=measured))
            log.info("r=%g g=%d: loss %.2f pp over %d group(s)", ratio, size, loss, len(measured))

    steps = {ratio: loss_steps_from_measurements(
        [(c.group_size, c.loss_pp) for c in cells if c.ratio == ratio], config.loss_cap_pp)
        for ratio in ratios}
    data = profile.model_dump(mode="json")
    data["shape"]["num_classes"] = num_classes  # the tables are relative to the base's C
    for variant in data["variants"]:
        variant["loss_steps"] = [list(step) for step in steps[variant["ratio"]]]
    return AccuracyTable(profile=ModelProfile.model_validate(data), group_sizes=sizes,
                         loss_cap_pp=config.loss_cap_pp, seed=config.seed,
                         finetune_epochs=config.materialize.finetune.epochs, measurements=cells)


def _base_accuracy(base_logits: torch.Tensor, labels: torch.Tensor, classes: list[int],
                   source: str) -> tuple[float, int]:
    """Base accuracy on the validation images of `classes`, over classes + "other"; image count."""
    mine = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    n = int(mine.sum())
    if n == 0:
        raise InputError(f"no validation images of classes {classes} (too few images per class?)",
                         field="--data", value=source)
    restricted = group_log_probs(base_logits[mine], classes)
    return accuracy(restricted, group_labels(labels[mine], classes)), n
