"""The command-line programs: ``stationctl`` (the technician's tool) and ``station`` (the daemon and the demo)."""
