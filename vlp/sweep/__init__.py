"""`vlp sweep SWEEP.yaml`: a grid of recipes (variants x budgets x seeds), each run in its own
folder by a child `vlp train`, resumable, then one table per budget (vlp.eval.compare).

`spec` reads and validates the sweep file, `plan` turns it into run folders (every recipe
validated, FLOP budgets counted once, edited sweeps refused), `runner` runs them.
"""
