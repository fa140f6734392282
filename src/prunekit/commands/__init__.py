"""CLI subcommands, one module each (see prunekit.cli)."""
