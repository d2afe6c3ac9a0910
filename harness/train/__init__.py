"""Layer 5: a run's full config, budget arithmetic, optimisers, building a method, and the training loop. Beside harness.tracking; below harness.run."""
