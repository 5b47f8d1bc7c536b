"""Callbacks: sample logging to TensorBoard."""

from kgen.callbacks.samples import SampleLogger
