"""The Python client of an Augur server: Predictor and Admin calls over gRPC, with no server
code and no server metrics in the caller's process."""

from augur.client.channel import BearerToken, client_channel
from augur.client.client import AdminClient, Prediction, PredictorClient
from augur.client.entities import encode_entities

__all__ = [
    "AdminClient",
    "BearerToken",
    "Prediction",
    "PredictorClient",
    "client_channel",
    "encode_entities",
]
