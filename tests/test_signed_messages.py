"""Celery's message signing (the ``auth`` serializer) through the bridge and a worker."""

import datetime
import json

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

import pgcelery
from tests import support
from tests.testapp.channels import Message
from tests.testapp.models import Event

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("transactional_db")]


def key_and_certificate(directory):
    """A private key and its self-signed certificate, as PEM files in ``directory``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pgcelery tests")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    key_path, certificate_path = directory / "worker.key", directory / "worker.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, certificate_path


def test_signed_messages_go_through_the_bridge_and_are_verified_by_the_worker(
        tmp_path, private_redis, spawn):
    key, certificate = key_and_certificate(tmp_path)
    env = support.subprocess_env(CELERY_BROKER_URL=private_redis.url,
                                 PGCELERY_TEST_SETTINGS=json.dumps({
                                     "CELERY_SECURITY_KEY": str(key),
                                     "CELERY_SECURITY_CERTIFICATE": str(certificate),
                                     "CELERY_SECURITY_CERT_STORE": str(certificate),
                                     "CELERY_TASK_SERIALIZER": "auth",
                                     "CELERY_ACCEPT_CONTENT": ["auth"],
                                 }))
    bridge = spawn.bridge(env=env)
    pgcelery.notify(Message, text="signed")
    support.wait_until(lambda: support.queue_length("celery", private_redis.url) == 1,
                       what="the signed message")
    [raw] = redis.Redis.from_url(private_redis.url).lrange("celery", 0, -1)
    message = json.loads(raw)
    assert message["content-type"] == "application/data"  # the auth serializer's
    assert "signed" not in json.dumps(message)  # the payload travels inside the signature

    worker = spawn.worker(env=env, name="signed-worker")
    support.wait_until(lambda: Event.objects.filter(listener="message_received").exists(),
                       what="the verified task to run")
    [event] = Event.objects.filter(listener="message_received")
    assert event.data == {"text": "signed"}
    assert worker.stop() == 0 and bridge.stop() == 0
