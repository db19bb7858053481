"""Exit codes of every command. A configuration error exits with 78 (EX_CONFIG,
``agent.config.errors``; systemd does not restart on it), carried by ConfigError."""

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and something failed (doctor: a check failed)
EXIT_USAGE = 2  # a bad command line (argparse)
EXIT_EVENTS_LOST = 75  # run: events were lost (the outbox could not store them; EX_TEMPFAIL)
