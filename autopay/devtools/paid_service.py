"""A small paid service for development and tests, built with the x402 SDK's server side: a
Flask app behind the SDK's payment middleware, with its own facilitator (the SDK's exact-EVM
facilitator and its own relayer key) settling on the local chain. Our engine pays it as an
x402 client (subscriptions with a ``resource_url``).

Routes (each answers 402 with its payment requirements until paid):

- ``GET /plans/<plan>``: honest: verifies, settles, answers 200 with a PAYMENT-RESPONSE receipt;
- ``GET /misbehave/no-settle/<plan>``: answers 200 to a payment header without settling;
- ``GET /misbehave/slow/<plan>``: settles, then answers only after ``--slow-seconds``
  (a client that times out has paid all the same);
- ``GET /misbehave/other-payee/<plan>``: asks to be paid to another address;
- ``GET /misbehave/overpriced/<plan>``: asks ten times the price.

    python -m autopay.devtools.paid_service --port 8402 --rpc-url http://127.0.0.1:8545 \\
        --token 0x… --pay-to 0x… --price-atomic 5000000 --facilitator-key 0x…
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address
from flask import Flask, jsonify
from werkzeug.serving import run_simple
from x402 import x402FacilitatorSync, x402ResourceServerSync
from x402.http import PaymentOption, RouteConfig
from x402.http.middleware.flask import payment_middleware
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator, register_exact_evm_server
from x402.schemas import AssetAmount

logger = logging.getLogger(__name__)

PLANS = ("pro",)


def build_app(
    *,
    rpc_url: str,
    network: str,
    token_address: str,
    token_name: str,
    token_version: str,
    pay_to: str,
    price_atomic: int,
    facilitator_key: str,
    slow_seconds: float = 5.0,
) -> Any:
    """The WSGI application: Flask behind the SDK's payment middleware, wrapped by the
    misbehaving variants."""
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(
        facilitator, FacilitatorWeb3Signer(facilitator_key, rpc_url), networks=network
    )
    server = x402ResourceServerSync(facilitator)
    register_exact_evm_server(server, networks=network)

    def option(*, amount: int, payee: str) -> PaymentOption:
        return PaymentOption(
            scheme="exact",
            network=network,
            pay_to=to_checksum_address(payee),
            price=AssetAmount(
                amount=str(amount),
                asset=to_checksum_address(token_address),
                extra={"name": token_name, "version": token_version},
            ),
            max_timeout_seconds=600,
        )

    other_payee = Account.create().address
    routes: dict[str, RouteConfig] = {}
    for plan in PLANS:
        honest = option(amount=price_atomic, payee=pay_to)
        routes[f"GET /plans/{plan}"] = RouteConfig(accepts=honest, description=f"{plan} plan")
        for variant in ("no-settle", "slow"):
            routes[f"GET /misbehave/{variant}/{plan}"] = RouteConfig(accepts=honest)
        routes[f"GET /misbehave/other-payee/{plan}"] = RouteConfig(
            accepts=option(amount=price_atomic, payee=other_payee)
        )
        routes[f"GET /misbehave/overpriced/{plan}"] = RouteConfig(
            accepts=option(amount=price_atomic * 10, payee=pay_to)
        )

    app = Flask("autopay-paid-service")

    @app.get("/plans/<plan>")
    @app.get("/misbehave/<variant>/<plan>")
    def paid(plan: str, variant: str = "") -> Any:
        return jsonify({"plan": plan, "access": "granted", "at": int(time.time())})

    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "ok"})

    payment_middleware(app, routes, server)
    return _Misbehaviour(app.wsgi_app, slow_seconds=slow_seconds)


class _Misbehaviour:
    """WSGI wrapper outside the SDK's middleware: the variants a client must survive."""

    def __init__(self, inner: Callable[..., Iterable[bytes]], *, slow_seconds: float) -> None:
        self._inner = inner
        self._slow_seconds = slow_seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        paying = bool(environ.get("HTTP_PAYMENT_SIGNATURE") or environ.get("HTTP_X_PAYMENT"))
        if paying and path.startswith("/misbehave/no-settle/"):
            # Takes the payment header, grants access, never settles (and no receipt).
            body = json.dumps({"access": "granted", "settled": False}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if paying and path.startswith("/misbehave/slow/"):
            # The SDK's middleware settles on chain, then starts the response: hold it back.
            def late_start_response(*args: Any) -> Any:
                time.sleep(self._slow_seconds)
                return start_response(*args)

            return self._inner(environ, late_start_response)
        return self._inner(environ, start_response)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8402)
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--chain-id", type=int, default=31337)
    parser.add_argument("--token", required=True)
    parser.add_argument("--token-name", default="USD Coin")
    parser.add_argument("--token-version", default="2")
    parser.add_argument("--pay-to", required=True)
    parser.add_argument("--price-atomic", type=int, required=True)
    parser.add_argument("--facilitator-key", required=True)
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s paid-service %(message)s")
    application = build_app(
        rpc_url=args.rpc_url,
        network=f"eip155:{args.chain_id}",
        token_address=args.token,
        token_name=args.token_name,
        token_version=args.token_version,
        pay_to=args.pay_to,
        price_atomic=args.price_atomic,
        facilitator_key=args.facilitator_key,
        slow_seconds=args.slow_seconds,
    )
    logger.info("paid service on http://%s:%d (pays to %s)", args.host, args.port, args.pay_to)
    # Threads: a slow (misbehaving) answer must not hold the others.
    run_simple(args.host, args.port, application, threaded=True)


if __name__ == "__main__":
    main()
