"""Local development services: a real Kafka broker from the Maven jars and Debian's redis-server."""
