"""The Scrapy side of bench/crawl.py: the same crawl as ilgun's (same host, every link, robots.txt
obeyed, title and the same extract fields per page, one JSON line per page), run with
``scrapy runspider``. Its stats (start/finish time, responses) go to the file in BENCH_STATS."""
import json
import os
import time

import scrapy

EXTRACT = os.environ.get("BENCH_EXTRACT") == "1"


class SiteSpider(scrapy.Spider):
    name = "bench"

    def __init__(self, start=None, **kw):
        super().__init__(**kw)
        self.start_urls = [start]
        self.allowed_domains = ["127.0.0.1"]

    def parse(self, response):
        item = {"url": response.url, "status": response.status, "title": response.css("title::text").get()}
        if EXTRACT:
            item["fields"] = {"h1": response.css("h1::text").get(),
                              "sku": response.css("span.price::attr(data-sku)").get(),
                              "tags": response.css("span.tag::text").getall()}
        yield item
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, callback=self.parse)

    def closed(self, reason):
        stats = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in self.crawler.stats.get_stats().items()}
        stats["closed_epoch"] = time.time()  # finish_time is set only after this runs
        with open(os.environ["BENCH_STATS"], "w") as f:
            json.dump(stats, f)
