"""The committed gRPC stubs are what `make proto` generates from the .proto files."""

from augur.api.generate import ROOT, generate


def test_stubs_are_not_stale(tmp_path):
    fresh = generate(tmp_path)
    assert fresh, "protoc produced no stubs"
    for path in fresh:
        committed = ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed.name} is not committed; run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed.name} is stale; run `make proto` and commit the result"
        )
