"""Built-in method plugins; importing this package registers them."""

from methods import (  # noqa: F401
    byol,
    contrastive_losses,
    cpc_v2,
    instdisc,
    invaspread,
    mae,
    moco,
    pixcontrast,
    rotnet,
    simclr,
    supervised,
)
