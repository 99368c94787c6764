"""The control plane: capsules and their registry, the topology, the accelerator catalog and
cost tables, model sizing, fleet files, and the planner (see docs/fleet.md)."""
