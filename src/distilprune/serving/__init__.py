"""Parts of the HTTP server (``distilprune.serve``): dynamic batching, metrics, the request gate."""
