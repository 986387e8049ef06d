"""One module per ``nbiafs`` subcommand; each exposes ``register(subparsers)``."""
