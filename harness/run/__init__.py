"""Layer 6: plugin loading (the only place that imports methods), the pretrain / eval lifecycle of a run, suites. Beside harness.report; below harness.cli."""
