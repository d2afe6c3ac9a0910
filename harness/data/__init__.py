"""Layer 2: datasets in their standard layouts, seeded batched views (augmentations), crop geometry. Imports only harness.core."""
