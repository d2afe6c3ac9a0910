"""sslbench harness: config, registries, data and views, backbones, trainer, tracking, CLI."""

__version__ = "0.1.0"
