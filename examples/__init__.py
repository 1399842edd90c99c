"""Example scenarios that `augur demo` and the tests run end to end."""
