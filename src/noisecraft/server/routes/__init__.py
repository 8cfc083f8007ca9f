"""The server's routers: `a1111` (/sdapi/v1), `queue` (/queue), `page` (the web page and /info)."""
