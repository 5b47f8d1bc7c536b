"""Serving: `kgen serve` (TF Serving REST = KServe V1, V2 REST/gRPC), `kgen
deploy` (TF Serving's models.config, Compose, KServe YAML) and a client.

`Client` speaks TF Serving's REST and gRPC APIs (see `kgen.serving.client`).
"""

from kgen.serving.client import Client
from kgen.serving.client import ServerError
