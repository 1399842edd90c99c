"""The Augur API: `.proto` files under augur/v1 and their generated Python stubs."""
