"""Callbacks: sample logging to TensorBoard; checkpoints, backups and
history written atomically; a stop on non-finite values."""

from kgen.callbacks.checkpoints import Checkpoint
from kgen.callbacks.checkpoints import FiniteCheck
from kgen.callbacks.checkpoints import HistoryLog
from kgen.callbacks.checkpoints import NonFiniteError
from kgen.callbacks.checkpoints import TrainingBackup
from kgen.callbacks.samples import SampleLogger
from kgen.callbacks.validation_kid import ValidationKID
from kgen.callbacks.validation_kid import take_images
