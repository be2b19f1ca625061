"""The head node's FastAPI app: `/metrics`, `/health` and the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tpmetrics import __version__
from tpmetrics.head.completions import CompletionService, validation_exception_handler
from tpmetrics.head.metrics_route import metrics

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0


async def health(request: Request) -> JSONResponse:
    """Return 200 when the aggregator responds within the timeout, 503 otherwise."""
    aggregator: Any = request.app.state.aggregator
    try:
        aggregator_id = await asyncio.wait_for(
            aggregator.aggregator_id.remote(), timeout=HEALTH_TIMEOUT_S
        )
    except Exception as error:
        logger.warning("health check failed: %s: %s", type(error).__name__, error)
        return JSONResponse(
            {"status": "unavailable", "error": f"{type(error).__name__}: {error}"}, status_code=503
        )
    return JSONResponse({"status": "ok", "aggregator_id": aggregator_id})


def create_app(aggregator: Any, completions: CompletionService | None = None) -> FastAPI:
    """Build the app around an aggregator actor; add the OpenAI routes when given a service."""
    app = FastAPI(title="tpmetrics", version=__version__)
    app.state.aggregator = aggregator
    app.add_api_route("/metrics", metrics, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"])
    if completions is not None:
        app.add_api_route("/v1/models", completions.models, methods=["GET"])
        app.add_api_route("/v1/completions", completions.completions, methods=["POST"])
        app.add_exception_handler(RequestValidationError, validation_exception_handler)
    return app
