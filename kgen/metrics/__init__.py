"""Metrics in the units each field reports."""

from kgen.metrics.classifier import ClassifierAccuracy
from kgen.metrics.distribution import FrechetDistance
from kgen.metrics.distribution import KernelInceptionDistance
from kgen.metrics.distribution import PrecisionRecall
from kgen.metrics.distribution import SampleBufferFull
from kgen.metrics.distribution import TooFewSamples
from kgen.metrics.likelihood import NegativeELBO
from kgen.metrics.likelihood import vae_negative_elbo
from kgen.metrics.text import BitsPerToken
from kgen.metrics.text import Perplexity
from kgen.metrics.audio import LogMelSpectrogram
from kgen.metrics.audio import audio_classifier
from kgen.metrics.audio import classifier_rate
from kgen.metrics.audio import load_classifier
from kgen.metrics.audio import score_audio
from kgen.metrics.text import text_bits_per_token
