"""The crawl benchmark's site: N generated pages served from memory by a separate process on
127.0.0.1 (HTTP/1.1, keep-alive, one thread per connection).

    python bench/crawl_site.py --pages 1000 --port 8123      # serves until killed

Pages look like documentation pages: a title, a navigation of 20 hub links, ~12 paragraphs,
a price and tags (for the extract fields), and 8 links to other pages, so every page is
reachable from / within a few levels. ~14 KB each. Seeded: the same site every run.
"""
from __future__ import annotations

import argparse
import random
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HUBS = 20
WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma "
         "tau upsilon phi chi psi omega").split()


def page_path(i: int) -> str:
    return "/" if i == 0 else f"/docs/{i % HUBS}/page-{i}.html"


def build_site(pages: int, seed: int = 7) -> dict[str, bytes]:
    rnd = random.Random(seed)
    site = {"/robots.txt": b"User-agent: *\nDisallow: /private/\n"}
    hubs = [page_path(i) for i in range(1, HUBS + 1)]
    for i in range(pages):
        nav = "".join(f"<li><a href='{h}'>Hub {k}</a></li>" for k, h in enumerate(hubs))
        related = [page_path(1 + (i * 7 + k * 13 + i // 3) % (pages - 1)) for k in range(8)]
        if i <= HUBS:  # hubs link to their pages, so the whole site is reachable
            related += [page_path(j) for j in range(i, pages, HUBS) if j][:60]
        links = "".join(f"<a href='{r}'>see {r}</a> " for r in related)
        paragraphs = "".join("<p>" + " ".join(rnd.choice(WORDS) for _ in range(90)) + "</p>" for _ in range(12))
        body = (f"<nav><ul>{nav}</ul></nav><main><h1>Page {i}</h1><span class='price' data-sku='SKU-{i}'>"
                f"{i % 97}.99</span><span class='tag'>t{i % 5}</span><span class='tag'>u{i % 3}</span>"
                f"{paragraphs}<div class='related'>{links}</div></main><footer><a href='/'>home</a></footer>")
        site[page_path(i)] = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Page {i}</title></head>"
                              f"<body>{body}</body></html>").encode()
    return site


def serve(pages: int, port: int) -> None:
    site = build_site(pages)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = site.get(self.path.split("?", 1)[0])
            status = 200 if body is not None else 404
            body = body if body is not None else b"not found"
            self.send_response(status)
            self.send_header("Content-Type", "text/plain" if self.path == "/robots.txt" else "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=1000)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve(args.pages, args.port)
