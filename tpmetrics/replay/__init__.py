"""Replay of request-level LLM inference traces against an OpenAI-compatible server.

`tpmetrics replay TRACE` sends each request of the trace at its recorded
arrival time, measures client-side latency, and checks that the server's
`/metrics` counters grew by exactly the requests and tokens the client saw.
"""

from tpmetrics.replay.trace import TraceRequest, read_trace

__all__ = ["TraceRequest", "read_trace"]
