"""Fetch the SmolLM-Corpus from the Hugging Face Hub and write it as training-ready text and tokens."""

__version__ = "0.1.0"

__all__ = ["SUBSETS", "FetchResult", "Progress", "__version__", "fetch", "fetch_all", "mix"]


def __getattr__(name: str):
    # Imported on first use, so that the command line can take Ctrl-C while it loads (see launch.py).
    if name in ("FetchResult", "Progress", "fetch"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "mix":
        from .mixture import mix

        return mix
    if name == "fetch_all":
        from .dedup import fetch_all

        return fetch_all
    if name == "SUBSETS":
        from .subsets import SUBSETS

        return SUBSETS
    raise AttributeError(f"module 'smollm_corpus' has no attribute {name!r}")
