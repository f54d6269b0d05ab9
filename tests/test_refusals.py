"""How a refused connection is told: one line naming the cluster, the user and the setting to fix.

The symptoms are the very messages each client gives (kafka-python logs them; librdkafka logs
them or reports them to its error callback), as seen against the secured local clusters.
"""

from __future__ import annotations

import logging

import pytest

from login_pipeline.client import StartupError
from login_pipeline.refusals import MAX_SYMPTOMS, Access, Symptoms, check_topic, unreachable

SASL = Access("input", "127.0.0.1:29094", "SASL_SSL", "processor", "SCRAM-SHA-512", "/etc/kafka/ca.pem")
PLAIN = Access("output", "127.0.0.1:29095", "PLAINTEXT", None, None, None)


@pytest.mark.parametrize(
    "symptom",
    [
        "Bootstrap connection to bootstrap-0 failed: [Error 58] SaslAuthenticationFailedError: "
        "SaslAuthenticationFailedError: Authentication failed during authentication due to invalid "
        "credentials with SASL mechanism SCRAM-SHA-512 (backoff 0.35 secs)",
        "sasl_ssl://127.0.0.1:29094/bootstrap: SASL authentication error: Authentication failed during "
        "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
    ],
)
def test_a_refused_password_names_the_user_and_the_settings_to_check(symptom):
    line = str(unreachable(SASL, ["socket disconnected", symptom], "KafkaTimeoutError"))
    assert line == (
        "the input cluster at 127.0.0.1:29094 refused user 'processor': SCRAM-SHA-512 authentication "
        "failed; check SASL_USERNAME and SASL_PASSWORD"
    )


@pytest.mark.parametrize(
    "symptom",
    [
        "Connection failed: KafkaConnectionError: Handshake failed: [SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: self-signed certificate in certificate chain (_ssl.c:1006)",
        "sasl_ssl://127.0.0.1:29094/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
        "certificate verify failed: broker certificate could not be verified",
    ],
)
def test_an_unverifiable_certificate_names_the_ca_file(symptom):
    line = str(unreachable(SASL, [symptom], "_TRANSPORT"))
    assert "presented a TLS certificate that SSL_CAFILE=/etc/kafka/ca.pem did not sign" in line


def test_without_a_ca_file_the_system_cas_are_named():
    line = str(unreachable(SASL._replace(ca_file=None), ["certificate verify failed"], "_SSL"))
    assert "the system's certificate authorities did not sign" in line


def test_a_tls_alert_read_as_a_kafka_frame_means_the_listener_speaks_tls():
    # 352518912 is 0x15030300: a TLS alert record's first four bytes.
    line = str(unreachable(PLAIN, ["Connection lost: InvalidReceiveError: Invalid frame length: 352518912"], "x"))
    assert line == (
        "the output cluster at 127.0.0.1:29095 speaks TLS, but SECURITY_PROTOCOL=PLAINTEXT: use SSL or SASL_SSL"
    )


def test_an_ordinary_bad_frame_length_is_not_taken_for_tls():
    line = str(unreachable(PLAIN, ["Invalid frame length: 1000000000"], "KafkaTimeoutError"))
    assert line == "cannot reach the output cluster at 127.0.0.1:29095 (KafkaTimeoutError)"


def test_a_connection_closed_at_the_first_request_hints_at_the_protocol_only_for_plaintext():
    symptom = "127.0.0.1:29095/bootstrap: Disconnected: connection closed by peer (after 0ms in state APIVERSION_QUERY)"
    assert "it may expect TLS or SASL, but SECURITY_PROTOCOL=PLAINTEXT" in str(unreachable(PLAIN, [symptom], "x"))
    assert str(unreachable(SASL, [symptom], "_TIMED_OUT")).startswith("cannot reach the input cluster")


KAFKA_PYTHON_HUNG_UP_AFTER_API_VERSIONS = (
    "<KafkaConnection node_id=bootstrap-0 broker_version=(4, 1) (disconnected)>: "
    "Connection lost: KafkaConnectionError: socket disconnected"
)
KAFKA_PYTHON_HUNG_UP_AT_ONCE = (
    "<KafkaConnection node_id=bootstrap-0 broker_version=unknown (disconnected)>: "
    "Connection lost: KafkaConnectionError: socket disconnected"
)


def test_a_broker_hanging_up_during_authentication_is_told_as_such():
    line = str(unreachable(SASL, [KAFKA_PYTHON_HUNG_UP_AFTER_API_VERSIONS], "KafkaTimeoutError"))
    assert line == (
        "the input cluster at 127.0.0.1:29094 closed the connection during SCRAM-SHA-512 authentication of "
        "user 'processor'; check SASL_USERNAME, SASL_PASSWORD and SASL_MECHANISM"
    )


def test_a_broker_hanging_up_at_once_on_plaintext_hints_at_the_protocol():
    line = str(unreachable(PLAIN, [KAFKA_PYTHON_HUNG_UP_AT_ONCE], "KafkaTimeoutError"))
    assert "closed the connection at the first request: it may expect TLS or SASL" in line
    # Not on a SASL client: there, a hang-up before ApiVersions says nothing about authentication.
    assert str(unreachable(SASL, [KAFKA_PYTHON_HUNG_UP_AT_ONCE], "x")).startswith("cannot reach")


def test_what_a_client_says_outright_wins_over_what_a_hang_up_suggests():
    symptoms = Symptoms()
    symptoms.note("Bootstrap connection failed: [Error 58] SaslAuthenticationFailedError: Authentication failed")
    for _ in range(20):
        symptoms.note(KAFKA_PYTHON_HUNG_UP_AFTER_API_VERSIONS)
    assert len(symptoms.newest_first()) == 1 + 5  # the telling line, and only the newest hang-ups
    assert "SCRAM-SHA-512 authentication failed" in str(unreachable(SASL, symptoms.newest_first(), "x"))


def test_nothing_recognised_says_unreachable_with_the_error_name():
    line = str(unreachable(SASL, ["Connection refused", "ECONNREFUSED"], "NoBrokersAvailable"))
    assert line == "cannot reach the input cluster at 127.0.0.1:29094 (NoBrokersAvailable)"


def test_a_line_never_quotes_a_password_from_the_symptoms():
    symptom = "Authentication failed for password hunter2-secret"
    assert "hunter2" not in str(unreachable(SASL, [symptom], "x"))


def test_a_topic_without_the_needed_operation_names_user_operation_topic_and_cluster():
    with pytest.raises(StartupError) as raised:
        check_topic(SASL, "user-login", None, {"DESCRIBE"}, "READ")
    assert str(raised.value) == (
        "user 'processor' may not READ topic 'user-login' on the input cluster at 127.0.0.1:29094: "
        "grant the ACLs in the README's least-privilege table"
    )


def test_a_hidden_topic_may_be_missing_or_not_visible_to_the_user():
    with pytest.raises(StartupError, match="does not exist on the input cluster at .*, or user 'processor' may not"):
        check_topic(SASL, "user-login", "TOPIC_AUTHORIZATION_FAILED", None, "READ")


def test_a_missing_topic_is_missing():
    with pytest.raises(StartupError, match="^topic 'user-login' does not exist on the input cluster at [^,]*$"):
        check_topic(SASL, "user-login", "UNKNOWN_TOPIC_OR_PARTITION", None, "READ")


def test_an_allowed_operation_or_a_cluster_without_authorizer_passes():
    check_topic(SASL, "user-login", None, {"READ", "DESCRIBE"}, "READ")
    check_topic(PLAIN, "processed-logins", None, None, "WRITE")


def test_symptoms_keep_the_telling_line_however_much_retry_chatter_follows_it_and_restore_the_logger():
    logger = logging.getLogger("test.symptoms")
    logger.propagate = True
    with Symptoms().collected_from(logger) as symptoms:
        logger.warning("Bootstrap connection failed: SaslAuthenticationFailedError: Authentication failed")
        for n in range(10 * MAX_SYMPTOMS):
            logger.warning("Bootstrap connection to bootstrap-0 failed: socket disconnected (attempt %d)", n)
        assert not logger.propagate
    assert logger.propagate and symptoms not in logger.handlers
    assert len(symptoms.seen) == 1
    assert "refused user 'processor'" in str(unreachable(SASL, symptoms.newest_first(), "KafkaTimeoutError"))


def test_symptoms_stay_bounded():
    symptoms = Symptoms()
    for n in range(MAX_SYMPTOMS + 10):
        symptoms.note(f"certificate verify failed ({n})")
    assert len(symptoms.seen) == MAX_SYMPTOMS
    assert symptoms.newest_first()[0] == f"certificate verify failed ({MAX_SYMPTOMS + 9})"
