"""The shared Kafka settings, mapped onto Faust's `broker_credentials` (aiokafka).

`LINEGUARD_KAFKA_SECURITY` holds librdkafka keys for the other services. The notifier's client is aiokafka, so the
keys are translated here; a key that has no aiokafka equivalent stops start-up naming it, rather than being
silently ignored (a client that quietly drops `ssl.ca.location` would talk to the wrong broker or none).

Supported: security.protocol PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; sasl.mechanism(s) PLAIN, SCRAM-SHA-256,
SCRAM-SHA-512, GSSAPI; sasl.username, sasl.password, sasl.kerberos.service.name; ssl.ca.location,
ssl.certificate.location, ssl.key.location, ssl.key.password, ssl.endpoint.identification.algorithm (https|none);
Amazon MSK IAM through LINEGUARD_KAFKA_MSK_IAM_REGION (SASL/OAUTHBEARER with a signed token).
Not supported: OAUTHBEARER/OIDC other than MSK IAM (sasl.oauthbearer.*), PEM strings inline (ssl.ca.pem, ...),
keystores (ssl.keystore.*), and librdkafka tuning keys.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from lineguard.settings import Settings, SettingsError

IGNORED = {"client.id"}  # harmless: the notifier names its own client


class MskIamTokenProvider:
    """aiokafka's token provider interface (`async token()`) over the MSK IAM signer."""

    def __init__(self, region: str) -> None:
        try:
            from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
        except ImportError as exc:  # pragma: no cover - depends on installed extras
            raise SettingsError("LINEGUARD_KAFKA_MSK_IAM_REGION is set but the signer is missing: "
                                "pip install 'lineguard[aws]'") from exc
        self._provider = MSKAuthTokenProvider
        self.region = region

    async def token(self) -> str:
        value, _expiry_ms = await asyncio.to_thread(self._provider.generate_auth_token, self.region)
        return value

    def extensions(self) -> dict[str, str]:
        return {}


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the shared settings; None for PLAINTEXT."""
    from faust.auth import GSSAPICredentials, OAuthCredentials, SASLCredentials, SSLCredentials

    conf = {k: v for k, v in settings.kafka_security.items() if k not in IGNORED}
    protocol = conf.pop("security.protocol", "SASL_SSL" if settings.kafka_msk_iam_region else "PLAINTEXT").upper()
    mechanism = (conf.pop("sasl.mechanism", None) or conf.pop("sasl.mechanisms", None) or "").upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise SettingsError(f"LINEGUARD_KAFKA_SECURITY: security.protocol={protocol} is not a Kafka protocol")
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=conf.pop("ssl.ca.location", None))
        cert, key = conf.pop("ssl.certificate.location", None), conf.pop("ssl.key.location", None)
        password = conf.pop("ssl.key.password", None)
        if cert:
            context.load_cert_chain(cert, key, password)
        if conf.pop("ssl.endpoint.identification.algorithm", "https").lower() == "none":
            context.check_hostname = False
    username, password = conf.pop("sasl.username", None), conf.pop("sasl.password", None)
    service_name = conf.pop("sasl.kerberos.service.name", "kafka")
    if conf:
        raise SettingsError("LINEGUARD_KAFKA_SECURITY: not supported by the notifier's Kafka client (aiokafka): "
                            + ", ".join(sorted(conf)) + " (see services/notifier/README.md)")
    if settings.kafka_msk_iam_region:
        if protocol != "SASL_SSL":
            raise SettingsError("LINEGUARD_KAFKA_MSK_IAM_REGION needs security.protocol=SASL_SSL")
        creds = OAuthCredentials(oauth_cb=MskIamTokenProvider(settings.kafka_msk_iam_region),
                                 ssl_context=context or ssl.create_default_context())
        return creds
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(context)
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        if not username or password is None:
            raise SettingsError(f"LINEGUARD_KAFKA_SECURITY: sasl.mechanism={mechanism} needs sasl.username and "
                                "sasl.password")
        return SASLCredentials(username=username, password=password, ssl_context=context, mechanism=mechanism)
    if mechanism == "GSSAPI":
        return GSSAPICredentials(kerberos_service_name=service_name, ssl_context=context)
    raise SettingsError(f"LINEGUARD_KAFKA_SECURITY: sasl.mechanism={mechanism or '(unset)'} is not supported by "
                        "the notifier (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, GSSAPI, or MSK IAM)")
