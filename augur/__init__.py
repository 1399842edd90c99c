"""Augur's application shell: the `augur` command and its configuration file."""
