"""Dense features: extraction from any backbone into a reusable, memory-mapped cache."""

from .cache import FeatureCache
from .extract import default_cache_root, extract_features, require_complete, resolve_device, weights_fingerprint
from .saliency import foreground_mask
from .source import BackboneSettings, Source, SplitData, infer_num_classes, load_split
from .transforms import DEFAULT_INPUT_SIZE, as_size, image_to_tensor, resize_mask, upsample_labels

__all__ = [
    "FeatureCache",
    "foreground_mask",
    "extract_features",
    "require_complete",
    "default_cache_root",
    "resolve_device",
    "weights_fingerprint",
    "as_size",
    "image_to_tensor",
    "resize_mask",
    "upsample_labels",
    "DEFAULT_INPUT_SIZE",
    "BackboneSettings",
    "Source",
    "SplitData",
    "infer_num_classes",
    "load_split",
]
