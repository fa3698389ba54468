"""The crawl kind's parts, free of Flask: URL rules (urls.py), robots.txt (robots.py), fetching
(fetcher.py), parsing (page.py), the level-by-level frontier (crawler.py) and its output files
(outputs.py). ``service/kinds/crawl.py`` validates params and runs a Crawler."""
