class DevEnvError(RuntimeError):
    """A local Kafka or Redis could not be set up, started or reached."""
