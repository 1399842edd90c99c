"""The config file: defaults, file values, environment overrides and clear errors."""

from pathlib import Path

import pytest

from augur.config import ConfigError, load


def test_defaults_work_without_a_file():
    config = load(None, environ={})
    assert config.server.port == 50051
    assert config.redis.address == "127.0.0.1:6379"
    assert config.model_repo == (Path.cwd() / "models").resolve()


def test_file_then_environment(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text("model_repo: m\nserver: {port: 7000, workers: 4}\n")
    config = load(path, environ={"AUGUR_SERVER__PORT": "7100", "AUGUR_LOGGING__JSON": "true"})
    assert config.server.port == 7100  # environment wins
    assert config.server.workers == 4
    assert config.logging.json is True
    assert config.model_repo == tmp_path / "m"  # relative to the file


def test_unknown_option_is_named(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text("server: {prot: 1}\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load(path, environ={})


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text("server: {port: many}\n")
    with pytest.raises(ConfigError, match=r"server\.port: expected int"):
        load(path, environ={})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.yaml", environ={})


def test_compile_cache_is_relative_to_the_file_and_empty_by_default(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text("server: {compile_cache: cache/compiled}\n")
    assert load(path, environ={}).server.compile_cache == str(tmp_path / "cache" / "compiled")
    assert load(None, environ={}).server.compile_cache == ""  # <model_repo>/.compiled


def test_calls_run_on_the_polling_thread_by_default_and_threads_grow_to_fill_a_batch():
    from augur.config import ServerConfig

    # the green pool on gRPC's own polling thread, batching on or off
    assert ServerConfig().green and ServerConfig().handler_threads == 0
    assert ServerConfig(batch_max_rows=16).handler_threads == 0
    assert ServerConfig(workers=8, batch_max_rows=64).handler_threads == 8
    # on threads: two, one computing while one waits on Redis, or, with batching on, one
    # per call a batch may hold, since a waiting call holds its thread
    assert not ServerConfig(handlers="threads").green
    assert ServerConfig(handlers="threads").handler_threads == 2
    assert ServerConfig(handlers="threads", batch_max_rows=16).handler_threads == 16
    wide = ServerConfig(handlers="threads", batch_max_rows=500, max_in_flight=64)
    assert wide.handler_threads == 64


def test_an_unknown_handler_pool_is_refused_naming_the_choices(tmp_path):
    path = tmp_path / "augur.yaml"
    path.write_text("server: {handlers: fibers}\n")
    with pytest.raises(ConfigError, match=r"server.handlers: expected one of green, threads"):
        load(path, environ={})
