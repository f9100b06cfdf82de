"""Label Studio ML backend serving ClipSAM pre-annotations (speaks the protocol itself)."""
