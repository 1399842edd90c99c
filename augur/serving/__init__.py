"""The prediction service: model repository, runtimes, the gRPC servicer, metrics, client."""
