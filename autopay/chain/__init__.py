"""Chain tooling: the local anvil node and the project's token contract."""
