"""Metrics in the units each field reports."""

from kgen.metrics.text import BitsPerToken
from kgen.metrics.text import Perplexity
from kgen.metrics.audio import LogMelSpectrogram
from kgen.metrics.audio import audio_classifier
from kgen.metrics.audio import classifier_rate
from kgen.metrics.audio import load_classifier
from kgen.metrics.audio import score_audio
