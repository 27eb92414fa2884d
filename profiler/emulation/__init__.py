"""An emulated edge fleet on one Linux host: network namespaces, `tc tbf` links, CPU/memory cgroups.

`fleet.EmulatedFleet` builds the nodes (root only) and removes everything it made, also on failure;
`check` calibrates, plans and serves a deployment on such a fleet and compares the plan's prediction
with what was measured (benchmarks/fleet_emulation.py prints the tables).
"""
