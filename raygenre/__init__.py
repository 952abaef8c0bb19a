"""raygenre: music genre classification at scale on Ray.

The public entry points are the CLI (``raygenre --help``) and the library functions it calls:
``raygenre.load_model`` is the one loader for trained model artifacts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from raygenre.model.artifact import LoadedModel


def load_model(path: Any) -> LoadedModel:
    """Load a model artifact folder (``model.safetensors`` + ``model.json``); see ``raygenre.model.artifact``."""
    from raygenre.model.artifact import load_model as _load

    return _load(path)


__all__ = ["__version__", "load_model"]
