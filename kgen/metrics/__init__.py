"""Metrics in the units each field reports."""

from kgen.metrics.text import BitsPerToken
from kgen.metrics.text import Perplexity
