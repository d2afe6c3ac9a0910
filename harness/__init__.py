"""sslbench: a benchmark and evaluation harness for self-supervised visual representation learning.

This module is the stable public API for writing a method plugin (built-in or third-party):

```python
from harness import Method, OptimDefaults, ViewRecipe, register_method, mlp

@register_method("mymethod", family="siamese", paper="Me et al., 2026")
class MyMethod(Method):
    Config = MyConfig                                # dataclass of the paper's defaults
    optim = OptimDefaults("lars", base_lr=0.3, weight_decay=1e-6)
    def view_recipe(self, info): return ViewRecipe.simclr(info.image_size)
    def training_step(self, batch, step): ...; return {"loss": loss}
```

Everything exported here comes from the harness's lower layers (core, data, models, the method
contract); the layers themselves never import this module. The layout and its rules are in
``docs/ARCHITECTURE.md``.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from harness.core.config import at_least, between, choices, list_of_choices, ordered, positive
from harness.core.distributed import all_reduce_mean, gather, gather_with_grad, rank, world_size
from harness.core.errors import CheckpointError, ConfigError, DataError, SSLBenchError
from harness.core.hypersphere import align_loss, uniform_loss
from harness.core.schedules import cosine, momentum_schedule, warmup_cosine
from harness.data.geometry import cell_diagonal, pixel_centres, positive_mask
from harness.data.views import ViewRecipe, Views, ViewSpec
from harness.method.contract import Batch, DataInfo, Method, OptimDefaults, Requirements, StepInfo
from harness.method.pipelines import MultiCrop, MultiCropConfig, TwoViewConfig, TwoViewMethod
from harness.method.registry import register_method
from harness.models.backbones import feature_map, has_feature_map, is_convnet, is_vit
from harness.models.blocks import Centering, EMATeacher, FeatureQueue, MemoryBank, sinkhorn_knopp
from harness.models.heads import DINOHead, WeightNormLinear, frozen, mlp

try:
    __version__ = _version("sslbench")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Batch", "Centering", "CheckpointError", "ConfigError", "DINOHead", "DataError", "DataInfo", "EMATeacher",
    "FeatureQueue", "MemoryBank", "Method", "MultiCrop", "MultiCropConfig", "OptimDefaults", "Requirements",
    "SSLBenchError", "StepInfo", "TwoViewConfig", "TwoViewMethod", "ViewRecipe", "ViewSpec", "Views",
    "WeightNormLinear", "align_loss", "all_reduce_mean", "at_least", "between", "cell_diagonal", "choices", "cosine",
    "feature_map", "frozen", "gather", "gather_with_grad", "has_feature_map", "is_convnet", "is_vit",
    "list_of_choices", "mlp", "momentum_schedule", "ordered", "pixel_centres", "positive", "positive_mask", "rank",
    "register_method", "sinkhorn_knopp", "uniform_loss", "warmup_cosine", "world_size",
]
