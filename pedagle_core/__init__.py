"""pedagle_core: the backend-agnostic P-EAGLE drafter, its checkpoint formats and the input expansion."""

from .config import ConfigError, DrafterConfig
from .model import Drafter

__all__ = ["ConfigError", "DrafterConfig", "Drafter"]
__version__ = "0.1.0"
