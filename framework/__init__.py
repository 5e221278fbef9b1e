"""BLIP-2 research framework: registries of parts assembled from YAML into a runner."""
__version__ = "0.1.0"
