"""Memory planner: predicted bytes per node and per rank of a training job (docs/PLANNER.md).

- `hvd_stgnn.plan.estimate.estimate(inputs, T, N, E, world_size, ranks_per_node) -> Plan`:
  the arithmetic (plus a small measured activation probe, plan/activations.py);
- `check_fits(cfg, ...)`: the trainer's pre-load check (ConfigError when it cannot fit);
- `hvd_stgnn.plan.cli.add_parsers(subcommands)`: the `hvd-stgnn plan` subcommand.

(`estimate` the function is not re-exported here: `hvd_stgnn.plan.estimate` stays the module.)
"""

from hvd_stgnn.plan.estimate import Plan, PlanInputs, check_fits

__all__ = ["Plan", "PlanInputs", "check_fits"]
