"""Supporting modules of kafka_consumer_processor.py: config, results, insights and the run loop."""
