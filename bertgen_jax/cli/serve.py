"""`bertgen serve`: HTTP generate with a batcher (a checkpoint directory or a `bertgen export` directory)."""

from __future__ import annotations

from ..serving import server as _server

NAME = "serve"
HELP = "serve generate over HTTP, batching concurrent requests"
DESCRIPTION = ("Serve POST /generate ({\"inputs\": ..., \"parameters\": {...}}, answered as the text2text pipeline), "
               "GET /health and GET /metrics; requests arriving within the batch window share one generate call.")
add_arguments = _server.add_arguments
run = _server.run
