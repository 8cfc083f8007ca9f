"""noisecraft: text-to-image diffusion, written from scratch in PyTorch."""

__version__ = "0.1.0"


def __getattr__(name):  # keep `import noisecraft` cheap: torch loads only when used
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(f"module 'noisecraft' has no attribute {name!r}")
