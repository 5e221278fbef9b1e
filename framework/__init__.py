"""BLIP-2 research framework: registries of parts assembled from YAML into a runner."""
import os

# Intel MKL (torch's CPU BLAS) picks code paths by memory alignment unless told otherwise, so two identical runs
# drift apart in the last bits within a few steps. MKL reads this when it first computes, so it is set here, on
# import, before any entry point (framework.train, evaluate, predict, ...) or a user's script multiplies a
# matrix; a value the user set wins. framework.engine.machine.set_determinism checks that it took effect.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.2.0"


def __getattr__(name: str):
    """``from framework import load`` (:mod:`framework.api`), imported on first use: ``import framework.x`` stays
    light."""
    if name == "load":
        from framework.api import load

        return load
    raise AttributeError(f"module 'framework' has no attribute {name!r}")
