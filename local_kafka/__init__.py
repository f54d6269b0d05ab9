"""Real Apache Kafka brokers and a login-event generator for running and testing without Docker."""
