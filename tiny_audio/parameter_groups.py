"""The trained parameters that the optimizers of both training stages (CTC warm-up, Trainer) group."""

from torch import nn


def trained_encoder_parameters(model) -> list[nn.Parameter]:
    """The parameters of the trained top encoder layers and final layer norm (pretrained weights: they may want a
    lower learning rate than the projector)."""
    return [p for module in model.audio_encoder.trained_modules() for p in module.parameters()]


def audio_parameters(model) -> list[nn.Parameter]:
    """The trained parameters between the audio and the LLM: the projector and any trained encoder layers."""
    return [*model.projector.parameters(), *trained_encoder_parameters(model)]
