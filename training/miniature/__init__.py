"""Miniature models trained here on the synthetic world (no downloads): micro-SAM, micro-CLIP."""
