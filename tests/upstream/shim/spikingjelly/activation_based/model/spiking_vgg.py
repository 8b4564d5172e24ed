"""spikingjelly.activation_based.model.spiking_vgg: not provided (a model zoo, not FlexSN)."""

from .._internal import missing

spiking_vgg16_bn = missing("model.spiking_vgg.spiking_vgg16_bn")
