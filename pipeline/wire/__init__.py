"""Wire formats: one module per format, found through a registry by `endpoint.api`.

`invocations` (Databricks REST), `chat_completions` (OpenAI Chat Completions) and `responses`
(OpenAI Responses) are registered here. Each owns everything format-specific (see
`pipeline.wire.base.WireFormat`); `register` adds another.
"""

from __future__ import annotations

from pipeline.wire.base import Endpoint, WireFormat
from pipeline.wire.chat_completions import ChatCompletions
from pipeline.wire.invocations import Invocations
from pipeline.wire.registry import names, register, unregister, wire_for
from pipeline.wire.responses import Responses

register(Invocations())
register(ChatCompletions())
register(Responses())

__all__ = ["Endpoint", "WireFormat", "names", "register", "unregister", "wire_for"]
