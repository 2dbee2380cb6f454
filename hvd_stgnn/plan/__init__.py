"""Memory planner: predicted bytes per node and per rank of a training job (docs/PLANNER.md).

`estimate(...) -> Plan` is pure arithmetic (plus a small activation probe); `check_fits`
is the trainer's pre-load check; `hvd_stgnn.plan.cli.add_plan_parser` adds `hvd-stgnn plan`.
"""

from hvd_stgnn.plan.estimate import Plan, PlanInputs, check_fits, estimate

__all__ = ["Plan", "PlanInputs", "check_fits", "estimate"]
