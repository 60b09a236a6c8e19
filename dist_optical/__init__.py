"""dist_optical: distributed OT distillation of English retrieval encoders into low-resource students."""

__version__ = "0.1.0"
