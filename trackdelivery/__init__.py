"""trackdelivery: fleet-wide Track Delivery for Exim mail servers (shared schema, settings, CLI)."""
