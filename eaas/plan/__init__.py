"""`eaas plan`: a trace-replay capacity planner that steps the operator's own autoscaler (docs/planner.md)."""
