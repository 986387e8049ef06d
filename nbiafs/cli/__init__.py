"""The command line: argparse wiring, one module per subcommand, the process's logging handler."""
