"""Layer 6: leaderboards (build, render, plots, export), regression comparisons and the CI gate, all read from the tracking store. Beside harness.run; below harness.cli."""
