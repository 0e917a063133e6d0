//! How workers are started: docker (through the docker CLI) or local processes.
