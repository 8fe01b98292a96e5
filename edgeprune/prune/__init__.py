"""The pruner's building blocks (METHOD.md). The training loop that uses them is not built yet."""
