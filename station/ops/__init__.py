"""Running on the box: systemd, control socket, runtime file, logging, clock, files, redaction, rate limits."""
