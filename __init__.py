"""modaloom: a plugin-based framework for multimodal (image, video, audio, text) models.

Public API::

    import modaloom
    registry = modaloom.load_plugins()
    spec = modaloom.load_spec("valor-tiny", overrides=["train.steps=10"])
    model = modaloom.build_model(spec.model, registry)

Plugins implement the hooks in `modaloom.core.hookspecs` with ``@modaloom.hookimpl``.
"""

from modaloom.core.compose import LoomModel, LoomOutput, build_model
from modaloom.core.errors import (
    MediaDecodeError,
    ModaloomError,
    SpecError,
    UnknownComponentError,
)
from modaloom.core.hookspecs import hookimpl
from modaloom.core.inference import Pipeline, load
from modaloom.core.interfaces import Encoder, EncoderOutput, Objective, Processor, Source
from modaloom.core.plugins import default_registry, load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec

__version__ = "0.1.0"

__all__ = [
    "Encoder",
    "EncoderOutput",
    "LoomModel",
    "LoomOutput",
    "MediaDecodeError",
    "ModaloomError",
    "Objective",
    "Pipeline",
    "Processor",
    "Registry",
    "Source",
    "SpecError",
    "UnknownComponentError",
    "build_model",
    "default_registry",
    "hookimpl",
    "load",
    "load_plugins",
    "load_spec",
]
