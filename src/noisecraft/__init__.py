"""noisecraft: text-to-image diffusion, written from scratch in PyTorch.

    from noisecraft import Pipeline, Request
    pipe = Pipeline.from_pretrained()            # the built-in model
    images = pipe("a palm tree", seed=0)         # or pipe(Request(...)), or pipe(pipe.resolve(...))
"""

from .version import __version__

__all__ = ["Pipeline", "Request", "Settings", "__version__"]


def __getattr__(name):  # keep `import noisecraft` cheap: torch loads only when used
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name in ("Request", "Settings"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(f"module 'noisecraft' has no attribute {name!r}")
