"""sslbench: a benchmark and evaluation harness for self-supervised visual representation learning.

This module is the stable public API for writing a method plugin (built-in or third-party):

```python
from harness import Method, OptimDefaults, ViewRecipe, register_method, mlp

@register_method("mymethod", family="contrastive", paper="Me et al., 2026", venue="ICML 2026")
class MyMethod(Method):
    Config = MyConfig                                # dataclass of the paper's defaults
    optim = OptimDefaults("lars", base_lr=0.3, weight_decay=1e-6)
    def view_recipe(self, info): return ViewRecipe.simclr(info.image_size)
    def training_step(self, batch, step): ...; return {"loss": loss}
```

Everything exported here comes from the harness's lower layers (core, data, models, the method
contract); the layers themselves never import this module. Names load on first use (PEP 562), so
``import harness.core.config`` (or ``sslbench --help``) does not pay for torch and timm. The layout and its rules are in
``docs/ARCHITECTURE.md``.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("sslbench")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"


# the public names, by the module that defines them
_API: dict[str, tuple[str, ...]] = {
    "harness.core.config": ("at_least", "between", "choices", "list_of_choices", "ordered", "positive"),
    "harness.core.distributed": ("all_reduce_mean", "gather", "gather_with_grad", "rank", "world_size"),
    "harness.core.errors": ("CheckpointError", "ConfigError", "DataError", "SSLBenchError"),
    "harness.core.hypersphere": ("align_loss", "uniform_loss"),
    "harness.core.schedules": ("cosine", "momentum_schedule", "warmup_cosine"),
    "harness.data.colour": ("ab_gamut_bins", "drop_channels", "lab_to_rgb", "rebalancing_weights", "rgb_to_lab",
                            "smoothed_prior", "soft_encode"),
    "harness.data.geometry": ("cell_diagonal", "pixel_centres", "positive_mask"),
    "harness.data.masking": ("block_mask", "random_mask", "random_masking", "upsample_mask"),
    "harness.data.tiles": ("assemble", "crop_at", "gap_layout", "gradient_energy", "grid_geometry", "grid_tiles", "hamming_permutations",
                           "hog_cells", "min_hamming_distance", "patchify", "permute_tiles", "split_tiles", "unpatchify",
                           "window_energy_argmax"),
    "harness.data.video": ("crop_flow", "gray_frames", "permute_frames"),
    "harness.data.views": ("ViewRecipe", "Views", "ViewSpec"),
    "harness.method.contract": ("Batch", "DataInfo", "Method", "OptimDefaults", "OptimPhase", "Requirements", "StepInfo"),
    "harness.method.pipelines": ("MultiCrop", "MultiCropConfig", "TwoViewConfig", "TwoViewMethod"),
    "harness.method.registry": ("register_method",),
    "harness.models.backbones": ("check_input_size", "feature_map", "has_feature_map", "is_convnet", "is_video", "is_vit"),
    "harness.models.blocks": ("Centering", "EMATeacher", "FeatureQueue", "MemoryBank", "sinkhorn_knopp"),
    "harness.models.heads": ("DINOHead", "WeightNormLinear", "frozen", "mlp"),
    "harness.models.hybrid": ("LayerNorm2d",),
    "harness.models.text": ("BPETokenizer", "TextTransformer"),
    "harness.models.translation": ("PatchDiscriminator", "ResnetDecoder", "ResnetEncoder", "gan_init"),
    "harness.models.vit": ("final_norm", "input_tokens", "output_tokens", "run_blocks", "sincos_pos_embed_2d", "token_grid"),
}


def __getattr__(name: str):
    """Load a public name on first use, from the module that defines it."""
    where = next((m for m, names in _API.items() if name in names), None)
    if where == "harness.core.config":
        from harness.core import config as module
    elif where == "harness.core.distributed":
        from harness.core import distributed as module
    elif where == "harness.core.errors":
        from harness.core import errors as module
    elif where == "harness.core.hypersphere":
        from harness.core import hypersphere as module
    elif where == "harness.core.schedules":
        from harness.core import schedules as module
    elif where == "harness.data.colour":
        from harness.data import colour as module
    elif where == "harness.data.geometry":
        from harness.data import geometry as module
    elif where == "harness.data.masking":
        from harness.data import masking as module
    elif where == "harness.data.tiles":
        from harness.data import tiles as module
    elif where == "harness.data.video":
        from harness.data import video as module
    elif where == "harness.data.views":
        from harness.data import views as module
    elif where == "harness.method.contract":
        from harness.method import contract as module
    elif where == "harness.method.pipelines":
        from harness.method import pipelines as module
    elif where == "harness.method.registry":
        from harness.method import registry as module
    elif where == "harness.models.backbones":
        from harness.models import backbones as module
    elif where == "harness.models.blocks":
        from harness.models import blocks as module
    elif where == "harness.models.heads":
        from harness.models import heads as module
    elif where == "harness.models.hybrid":
        from harness.models import hybrid as module
    elif where == "harness.models.text":
        from harness.models import text as module
    elif where == "harness.models.translation":
        from harness.models import translation as module
    elif where == "harness.models.vit":
        from harness.models import vit as module
    else:
        raise AttributeError(f"module 'harness' has no attribute '{name}'")
    value = getattr(module, name)
    globals()[name] = value     # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = sorted(n for names in _API.values() for n in names)
