"""Built-in method plugins; importing this package registers them."""

from methods import simclr  # noqa: F401
