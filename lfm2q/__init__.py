"""lfm2q: run Liquid AI's LFM2 / LFM2.5 models from GGUF files on small CPUs.

    import lfm2q
    model = lfm2q.load("model.gguf")
    print(model.generate("The meaning of", max_tokens=32))
"""
from . import numba_cache  # noqa: F401  (first: kernels compiled below must cache in the right place)
from .api import Model, load
from .builtin import builtin_model_path
from .errors import ConvertError, GenerationError, GGUFError, Lfm2qError, TokenizerError
from .gguf_model import Lfm2Config
from .model import Session

__version__ = "0.1.0"

__all__ = ["load", "Model", "builtin_model_path", "Session", "Lfm2Config", "Lfm2qError", "GGUFError", "ConvertError",
           "TokenizerError", "GenerationError", "__version__"]
