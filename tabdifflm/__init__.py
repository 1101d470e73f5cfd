"""tabdifflm: realistic synthetic tables with DiffLM (VAE + latent diffusion + a frozen LLM decoder)."""
__version__ = "0.18.1"

from .constraints import FixedCombinations, Inequality, Negative, Positive, Predicate  # noqa: E402
from .synthesizer import DiffLMSynthesizer  # noqa: E402
from .imputer import DiffLMImputer  # noqa: E402
from .oversampler import DiffLMOversampler  # noqa: E402
from .reporting import evaluate, report  # noqa: E402

__all__ = ["DiffLMImputer", "DiffLMOversampler", "DiffLMSynthesizer", "FixedCombinations", "Inequality",
           "Negative", "Positive", "Predicate", "__version__", "evaluate", "report"]
