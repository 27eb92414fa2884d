"""Costs of pruned ViT variants (FLOPs with fvcore, memory, host latency) and device calibration.

Entry points: `profiler.model_profile.profile_model` (a `planner.profile_schema.ModelProfile`),
`profiler.calibrate.calibrate_host` (a device kind for the planner), `python -m profiler.builtin`
(the planner's built-in profiles). Imports torch; `planner` never imports this package.
"""
