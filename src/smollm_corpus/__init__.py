"""Fetch the SmolLM-Corpus from the Hugging Face Hub and write it as training-ready text."""

__version__ = "0.1.0"

from .pipeline import FetchResult, Progress, fetch  # noqa: E402
from .subsets import SUBSETS  # noqa: E402

__all__ = ["SUBSETS", "FetchResult", "Progress", "__version__", "fetch"]
