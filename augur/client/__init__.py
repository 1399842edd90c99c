"""The Python client: `from augur.client import PredictorClient` (and AdminClient)."""

from augur.client.client import AdminClient, Prediction, PredictorClient

__all__ = ["AdminClient", "Prediction", "PredictorClient"]
