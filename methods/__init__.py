"""Built-in method plugins; importing this package registers them."""

from methods import (  # noqa: F401
    barlow_twins,
    byol,
    contrastive_objectives,
    cpc_v2,
    dino,
    instdisc,
    invaspread,
    mae,
    moco,
    moco_v3,
    pixcontrast,
    rotnet,
    simclr,
    simclr_v2,
    simsiam,
    supervised,
    swav,
)
