"""One module per ``ltpa`` subcommand: ``add_<name>_parser(subparsers)`` and ``<name>_command(args)``."""
