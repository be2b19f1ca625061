"""`GET /metrics`: the aggregator's merged exposition, as a plain route.

A plain route, not a mounted sub-app: Starlette responds to a mounted `/metrics`
with a redirect to `/metrics/`, which some scrapers do not follow.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from typing import Any

from fastapi import Request, Response

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 10.0


async def metrics(request: Request) -> Response:
    """Render the merged metrics in the format the `Accept` header requests.

    `name[]` query parameters keep only the samples of those names, as
    prometheus_client's HTTP handler does; `Accept-Encoding: gzip` compresses.
    """
    aggregator: Any = request.app.state.aggregator
    accept = request.headers.get("accept", "")
    names = request.query_params.getlist("name[]")
    try:
        body, content_type = await asyncio.wait_for(
            aggregator.scrape.remote(accept, names or None), timeout=SCRAPE_TIMEOUT_S
        )
    except Exception as error:
        logger.warning("scrape failed: %s: %s", type(error).__name__, error)
        return Response(
            f"aggregator unavailable: {type(error).__name__}: {error}\n",
            status_code=503,
            media_type="text/plain",
        )
    headers = {"Content-Type": content_type}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return Response(body, headers=headers)
