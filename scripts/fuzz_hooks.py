"""Schemathesis hooks for `scripts/fuzz` (loaded through SCHEMATHESIS_HOOKS).

Two things a schema cannot say, so that generated requests reach the code
behind validation instead of bouncing off it:

- Idempotency keys. Hypothesis draws few distinct short strings ("0", "A",
  ...), so generated keys collide all the time and most requests would end
  as replays or 422 `idempotency_key_reused`. A key that the API accepts
  (1-255 printable ASCII characters) is made unique per request; a key that
  it must refuse (missing, empty, too long, control or non-ASCII characters)
  is sent as generated, so the 400s are fuzzed too.
- Cards. A random 13-19 digit number fails the Luhn check (400) or is
  unknown to the bank (402), so no payment would ever be authorized and
  capture, void and refund would only ever see 404s. In half of the
  schema-valid authorizations the card becomes the bank's funded test card
  and the amount a few dollars, so the stateful phase can chain authorize,
  capture, void and refund on real payments.
"""

import re
import uuid

import schemathesis

IDEMPOTENCY_KEY = "idempotency-key"
VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
TEST_CARD = {"number": "4111111111111111", "cvv": "123", "expiry_month": 12, "expiry_year": 2030}


@schemathesis.hook
def before_call(context, case, **kwargs):
    unique_idempotency_key(case)
    if case.operation.method.upper() == "POST" and case.operation.path == "/v1/payments":
        fund_the_card(case)


def unique_idempotency_key(case):
    headers = case.headers
    if not headers:
        return
    name = next((n for n in headers if n.lower() == IDEMPOTENCY_KEY), None)
    if name is None:
        return
    value = headers[name]
    if isinstance(value, str) and VALID_KEY.fullmatch(value):
        headers[name] = f"fuzz-{uuid.uuid4().hex}-{value}"[:255]


def fund_the_card(case):
    if not body_is_positive(case):
        return
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("card"), dict):
        return
    number = body["card"].get("number")
    if not isinstance(number, str) or not number[-1:].isdigit() or int(number[-1]) % 2:
        return
    body["card"] = dict(TEST_CARD)
    if isinstance(body.get("amount"), int):
        body["amount"] = body["amount"] % 5000 + 1


def body_is_positive(case):
    meta = case.meta
    if meta is None:
        return False
    for location, info in meta.components.items():
        if getattr(location, "value", location) == "body":
            return str(info.mode) == "positive"
    return False
