"""Built-in method plugins; importing this package registers them."""

from methods import byol, mae, moco, rotnet, simclr  # noqa: F401
