"""The model repository's refusal: a model.yaml, metadata or artifact that is not what it must
be, with the file and the field named."""

from __future__ import annotations


class RepositoryError(ValueError):
    pass
