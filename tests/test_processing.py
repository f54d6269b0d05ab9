"""The process step's helpers (login_pipeline.processing). The loop itself is specified in
test_pipeline.py, and on real brokers in test_processor_kafka.py."""

import logging

from login_pipeline.client import Partition
from login_pipeline.processing import NULL_VALUE, processing_error


def failing_rule(raw: bytes) -> None:
    raise ValueError(f"cannot use ip {raw.decode()}")


def test_a_processing_error_names_the_exception_type_and_place_never_its_text(caplog):
    try:
        failing_rule(b"203.0.113.9")
    except ValueError as error:
        with caplog.at_level(logging.ERROR):
            rejection = processing_error(error, Partition("user-login", 2), 41)
    assert (rejection.reason, rejection.field) == ("processing_error", None)
    assert rejection.message == "process_message raised ValueError"
    assert "203.0.113.9" not in caplog.text
    assert "ValueError" in caplog.text and "failing_rule" in caplog.text and "user-login:2 offset 41" in caplog.text


def test_a_null_value_is_a_malformed_json_dead_letter():
    assert (NULL_VALUE.reason, NULL_VALUE.message) == ("malformed_json", "the record has no value (null)")
