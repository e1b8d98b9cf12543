"""Dense features: extraction from any backbone into a reusable, memory-mapped cache."""
from .cache import FeatureCache
from .saliency import foreground_mask
from .extract import default_cache_root, extract_features, require_complete, resolve_device, weights_fingerprint
from .transforms import as_size, image_to_tensor, resize_mask, upsample_labels

__all__ = ["FeatureCache", "foreground_mask", "extract_features", "require_complete", "default_cache_root", "resolve_device", "weights_fingerprint",
           "as_size", "image_to_tensor", "resize_mask", "upsample_labels"]
