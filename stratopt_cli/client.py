"""Client-side helpers shared by the CLI, the demo and the benchmark: channels, CSV ingestion, errors."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import polars as pl
from google.rpc import error_details_pb2  # type: ignore[attr-defined]  # stubs hidden by types-protobuf
from grpc_status import rpc_status

from stratopt.v1 import command_service_pb2 as cmd_pb
from stratopt.v1 import command_service_pb2_grpc as cmd_grpc
from stratopt.v1 import query_service_pb2_grpc as query_grpc
from stratopt.v1 import trading_service_pb2_grpc as trading_grpc

DEFAULT_TARGET = "127.0.0.1:50051"
BARS_PER_MESSAGE = 10_000
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


TOKEN_ENV = "STRATOPT_TOKEN"
"""Environment variable holding a bearer token (JWT) for the client."""


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS material and bearer token of a client channel (all None: plaintext, no token).

    Parameters
    ----------
    root_certificates : bytes or None
        PEM CA bundle that signed the server's certificate; set: the channel uses TLS.
    certificate_chain, private_key : bytes or None
        PEM client certificate and key (mTLS).
    token : str or None
        Bearer token (JWT) sent with every call; only ever sent over TLS.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    token: str | None = None

    @classmethod
    def from_files(
        cls,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        token_file: Path | None = None,
    ) -> ChannelSecurity:
        """Read the files; the token from ``token_file``, else ``$STRATOPT_TOKEN``.

        Raises
        ------
        ValueError
            A certificate without its key (or the reverse), or client certificate or token without a CA
            (no TLS: a bearer token is never sent in plaintext).
        """
        if (cert_file is None) != (key_file is None):
            raise ValueError("--tls-cert and --tls-key go together")
        token = token_file.read_text().strip() if token_file is not None else os.environ.get(TOKEN_ENV) or None
        if ca_file is None and (cert_file is not None or token):
            raise ValueError("a client certificate or a token needs TLS: give --tls-ca")
        return cls(
            root_certificates=None if ca_file is None else ca_file.read_bytes(),
            certificate_chain=None if cert_file is None else cert_file.read_bytes(),
            private_key=None if key_file is None else key_file.read_bytes(),
            token=token,
        )


def channel(target: str, security: ChannelSecurity | None = None) -> grpc.Channel:
    """A channel to a stratopt server at ``host:port``.

    Plaintext without ``security`` (or without its CA); else TLS, with the client certificate and the bearer
    token that ``security`` holds.

    Raises
    ------
    ValueError
        A token without TLS (never sent in plaintext).
    """
    if security is None or security.root_certificates is None:
        if security is not None and (security.token or security.certificate_chain):
            raise ValueError("a client certificate or a token needs TLS")
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        security.root_certificates, security.private_key, security.certificate_chain
    )
    if security.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(security.token)
        )
    return grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)


def command_stub(ch: grpc.Channel) -> cmd_grpc.OptimizationCommandServiceStub:
    """Stub of the command service."""
    return cmd_grpc.OptimizationCommandServiceStub(ch)


def query_stub(ch: grpc.Channel) -> query_grpc.OptimizationQueryServiceStub:
    """Stub of the query service."""
    return query_grpc.OptimizationQueryServiceStub(ch)


def trading_stub(ch: grpc.Channel) -> trading_grpc.TradingCommandServiceStub:
    """Stub of the trading command service (allocation, holdings, drift, rebalancing, approval)."""
    return trading_grpc.TradingCommandServiceStub(ch)


def read_wide_prices(path: Path, symbol_prefix: str = "") -> pl.DataFrame:
    """Read a wide price CSV (first column the date, one column per symbol; gzip allowed).

    Parameters
    ----------
    path : Path
        The CSV file.
    symbol_prefix : str
        Prepended to every column name (to keep two sources of the same ticker apart, e.g. ``PPO.``).

    Returns
    -------
    polars.DataFrame
        Long format: ``symbol`` (str), ``timestamp`` (UTC datetime), ``price`` (float), rows with a price only.
    """
    frame = pl.read_csv(path, try_parse_dates=True, infer_schema_length=10_000)
    date_column = frame.columns[0]
    frame = frame.with_columns(pl.col(date_column).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    return (
        frame.unpivot(index=date_column, variable_name="symbol", value_name="price")
        .rename({date_column: "timestamp"})
        .with_columns(pl.col("price").cast(pl.Float64), (pl.lit(symbol_prefix) + pl.col("symbol")).alias("symbol"))
        .drop_nulls("price")
        .select("symbol", "timestamp", "price")
    )


def bar_messages(
    prices: pl.DataFrame, progress: Callable[[int], None] | None = None
) -> Iterator[cmd_pb.IngestMarketDataRequest]:
    """Client-stream messages of at most ``BARS_PER_MESSAGE`` bars from a long price frame."""
    sent = 0
    for chunk in prices.iter_slices(BARS_PER_MESSAGE):
        message = cmd_pb.IngestMarketDataRequest()
        for symbol, when, price in chunk.iter_rows():
            bar = message.bars.add(symbol=symbol, price=price)
            bar.timestamp.FromDatetime(when)
        sent += len(chunk)
        if progress is not None:
            progress(sent)
        yield message


def ingest_csv(
    stub: cmd_grpc.OptimizationCommandServiceStub, path: Path, *, symbol_prefix: str = "", quiet: bool = False
) -> cmd_pb.IngestMarketDataResponse:
    """Stream a wide price CSV to ``IngestMarketData``, printing progress to stderr unless ``quiet``."""
    prices = read_wide_prices(path, symbol_prefix)
    total = len(prices)

    def report(sent: int) -> None:
        if not quiet:
            print(f"\ringesting {path.name}: {sent}/{total} bars", end="", file=sys.stderr, flush=True)

    response: cmd_pb.IngestMarketDataResponse = stub.IngestMarketData(bar_messages(prices, report), timeout=600)
    if not quiet:
        print(file=sys.stderr)
    return response


def describe_rpc_error(error: grpc.RpcError) -> str:
    """One readable paragraph for a failed call: code, message and the rich error details."""
    call = error if isinstance(error, grpc.Call) else None
    code = call.code().name if call is not None else "UNKNOWN"
    lines = [f"{code}: {call.details() if call is not None else error}"]
    status = rpc_status.from_call(call) if call is not None else None
    details: list[Any] = list(status.details) if status is not None else []
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            lines += [f"  field {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            lines += [f"  {v.type} ({v.subject}): {v.description}" for v in failure.violations]
    return "\n".join(lines)
