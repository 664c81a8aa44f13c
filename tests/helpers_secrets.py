"""Planted secrets: one made-up value in each token format detect-secrets documents, for the redaction tests.

Values are assembled from pieces so that this file itself does not look like a leaked credential to
other scanners. `FORMATS[name] = (value, part)`: `part` is the piece that must never reach a bundle
(for a URL with a password it is the password; the user and host may stay).
"""

from __future__ import annotations

import base64
import json


def _b64url(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


_R40 = "q7Lm2Xv9Kp4Zt8Rw3Ny6Hb1Jd5Fg0Sc" + "QaWeRtYu"  # 40 mixed characters, no pattern
_HEX64 = "9f4c2e7a1b3d5f6071829a3b4c5d6e7f" + "8091a2b3c4d5e6f708192a3b4c5d6e7f"
_LOWER64 = "k3j5h7g9f1d2s4a6p8o0i9u7y5t3r1e2" + "w4q6z8x0c2v4b6n8m1l3k5j7h9g2f4d6"

_JWT = (_b64url({"alg": "HS256", "typ": "JWT"}) + "." + _b64url({"sub": "repro-test", "iat": 1700000000})
        + ".Xq9vT3kLm2Pz8Rw5Ny7Hb4Jd6Fg1Sc0AaQeWrTy")
_PEM = ("-----BEGIN RSA " + "PRIVATE KEY-----\nMIIEpAIBAAKCAQEAplantedRsaKeyBodyLine1xYz0123456789\n"
        "plantedRsaKeyBodyLine2AbCdEfGh\n-----END RSA " + "PRIVATE KEY-----")

# detect-secrets plugin class name -> (planted value, the part that must not survive)
FORMATS: dict[str, tuple[str, str]] = {
    "AWSKeyDetector": ("AKIA" + "Z7Q3M4N5P6R2T8VW", "AKIA" + "Z7Q3M4N5P6R2T8VW"),
    "ArtifactoryDetector": ("AKC" + "p8kqX4Vb9Lm2Nr7Ts3Wz5Yh", "AKC" + "p8kqX4Vb9Lm2Nr7Ts3Wz5Yh"),
    "AzureStorageKeyDetector": ("DefaultEndpointsProtocol=https;AccountName=reprotest;AccountKey="
                                + (_R40 * 3)[:86] + "==;EndpointSuffix=core.windows.net", (_R40 * 3)[:86]),
    "BasicAuthDetector": ("https://alerts:" + "Pl4ntedHookPassw0rd" + "@hooks.example.com/notify",
                          "Pl4ntedHookPassw0rd"),
    "CloudantDetector": ("https://reprotest:" + _HEX64 + "@reprotest.cloudant.com", _HEX64),
    "DiscordBotTokenDetector": ("MTA4NjQyNTY3ODkwMTIzNDU2Nw" + ".GhJkLm." + "AbCdEfGhIjKlMnOpQrStUvWxYz0",
                                "AbCdEfGhIjKlMnOpQrStUvWxYz0"),
    "GitHubTokenDetector": ("ghp_" + _R40[:36], "ghp_" + _R40[:36]),
    "GitLabTokenDetector": ("glpat-" + _R40[:20], "glpat-" + _R40[:20]),
    "IbmCloudIamDetector": ("apikey=" + (_R40 + "Ab3d")[:44], (_R40 + "Ab3d")[:44]),
    "IbmCosHmacDetector": ("secret_access_key=" + _HEX64[:48], _HEX64[:48]),
    "JwtTokenDetector": (_JWT, _JWT.split(".")[2]),
    "KeywordDetector": ('db_password = "Pl4nted-Kw-Secret"', "Pl4nted-Kw-Secret"),
    "MailchimpDetector": (_LOWER64[:32] + "-us12", _LOWER64[:32]),
    "NpmDetector": ("//registry.npmjs.org/:_authToken=npm_" + _R40[:36], "npm_" + _R40[:36]),
    "OpenAIDetector": ("sk-" + _R40[:20] + "T3Blbk" + "FJ" + _R40[20:40], _R40[:20] + "T3Blbk" + "FJ"),
    "PrivateKeyDetector": (_PEM, "plantedRsaKeyBodyLine2AbCdEfGh"),
    "PypiTokenDetector": ("pypi-AgEIcHlwaS5vcmc" + (_R40 * 2)[:72], (_R40 * 2)[:72]),
    "SendGridDetector": ("SG." + _R40[:22] + "." + (_R40 + "Zx9")[:43], (_R40 + "Zx9")[:43]),
    "SlackDetector": ("https://hooks.slack.com/services/" + "T0PLANTED1/B0PLANTED2/" + _R40[:24], _R40[:24]),
    "SoftlayerDetector": ("softlayer_api_key=" + _LOWER64, _LOWER64),
    "SquareOAuthDetector": ("sq0csp-" + (_R40 + "Ab3")[:43], (_R40 + "Ab3")[:43]),
    "StripeDetector": ("sk_" + "live_" + _R40[:24], "sk_" + "live_" + _R40[:24]),
    "TelegramBotTokenDetector": ("1234567890:" + (_R40[:35]), _R40[:35]),
    "TwilioKeyDetector": ("SK" + _LOWER64[:32], "SK" + _LOWER64[:32]),
    "Base64HighEntropyString": ("Zq8vN3xK7pW2mR5tY9bC4hJ6gF1dS0aE", "Zq8vN3xK7pW2mR5tY9bC4hJ6gF1dS0aE"),
    "HexHighEntropyString": (_HEX64[:48], _HEX64[:48]),
}

# Not planted: public IPs are not secrets (host and address mapping is --redact-hosts).
NOT_FORMATS = {"IPPublicDetector"}
