"""modaloom: a plugin-based framework for multimodal (image, video, audio, text) models.

Public API::

    import modaloom
    registry = modaloom.load_plugins()
    spec = modaloom.load_spec("valor-tiny", overrides=["train.steps=10"])
    model = modaloom.build_model(spec.model, registry)

Plugins implement the hooks in `modaloom.core.hookspecs` with ``@modaloom.hookimpl`` and
register components with the typed `Registry` methods (``registry.add_encoder(...)``); their
configs extend the spec bases exported here (`ComponentSpec`, `ObjectiveSpec`, ...).
"""

from modaloom.core.compose import BuildContext, LoomModel, LoomOutput, build_model
from modaloom.core.errors import (
    MediaDecodeError,
    ModaloomError,
    SpecError,
    UnknownComponentError,
)
from modaloom.core.evaluation import EvalContext, Evaluator
from modaloom.core.features import FeatureCache
from modaloom.core.hookspecs import hookimpl
from modaloom.core.inference import Pipeline, load
from modaloom.core.interfaces import (
    DataContext,
    Decoder,
    Encoder,
    EncoderOutput,
    Objective,
    Processor,
    Source,
    TextCodec,
)
from modaloom.core.plugins import default_registry, load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import (
    ComponentSpec,
    DataSpec,
    EvaluatorSpec,
    ExperimentSpec,
    ModelSpec,
    ObjectiveSpec,
    SourceSpec,
    Spec,
    TrainSpec,
)

__version__ = "0.1.0"

__all__ = [
    "BuildContext",
    "ComponentSpec",
    "DataContext",
    "DataSpec",
    "Decoder",
    "Encoder",
    "EncoderOutput",
    "EvalContext",
    "Evaluator",
    "EvaluatorSpec",
    "ExperimentSpec",
    "FeatureCache",
    "LoomModel",
    "LoomOutput",
    "MediaDecodeError",
    "ModaloomError",
    "ModelSpec",
    "Objective",
    "ObjectiveSpec",
    "Pipeline",
    "Processor",
    "Registry",
    "Source",
    "SourceSpec",
    "Spec",
    "SpecError",
    "TextCodec",
    "TrainSpec",
    "UnknownComponentError",
    "build_model",
    "default_registry",
    "hookimpl",
    "load",
    "load_plugins",
    "load_spec",
]
